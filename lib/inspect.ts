/**
 * `inspect(path)`: static diagnosis of whether a shared library can really
 * leave the process after dlclose, and how dlhost can reload it.
 *
 * ## Verdict policy
 *
 * `reasons` lists every static reason from `stuckReasons()`, in its fixed
 * order. They are not all equal:
 *
 * - `'NODELETE'`, `'GNU_UNIQUE'`, `'Go runtime'` are *hard*: glibc (or the Go
 *   runtime's threads) keeps the object mapped whatever the host does. Any of
 *   them makes `unloadable: false`, `verdict: 'stuck'`.
 * - `'TLS destructors pending'` (a PT_TLS segment plus thread_local
 *   destructors registered through `__cxa_thread_atexit[_impl]`) is
 *   *conditional*: glibc defers the unmap only until every thread that
 *   touched such a thread_local has exited. dlhost's own poll threads are
 *   joined before dlclose (Level 2), so a plugin that touches its
 *   thread_locals only there does unload; one that touches them on the
 *   loading thread (a constructor, `callSync`) stays until that thread ends.
 *   The verdict is therefore `unloadable: true`, `verdict: 'conditional'`,
 *   with the reason kept in `reasons` and in `warnings`. Why true rather than
 *   false: for a plugin host a wrong "unloadable" costs one reported leak —
 *   dlhost verifies every unload and reports `stuck`, and each version is
 *   loaded from a private copy, so fresh code still loads — while a wrong
 *   "not unloadable" would force a process restart on every reload of every
 *   C++ plugin with a thread_local. The measurement at run time is the
 *   truth; this is the forecast.
 *
 * `canCoexist` — may two versions be loaded side by side ('shadow' reload) —
 * is false for a Go runtime (one per process) and for GNU_UNIQUE symbols:
 * the second copy binds to the first copy's unique objects, so versions
 * would share (and, if the layout changed, corrupt) that state.
 */
import { readElfFile } from './elf'
import { DlhostError, typeError } from './errors'
import { untrustedReason } from './trust'
import { Abi, autoStrategy, checkHostCompatible, coexistBlockers, detectAbi, stuckReasons, unloadBlockers } from './rules'

export type Verdict = 'unloadable' | 'conditional' | 'stuck'

export interface InspectReport {
  path: string
  /** False when a hard reason keeps it mapped after dlclose (see the verdict policy above). */
  unloadable: boolean
  /** 'unloadable' (no static reason), 'conditional' (only 'TLS destructors pending'), 'stuck'. */
  verdict: Verdict
  /** Every static reason, in stuckReasons() order. */
  reasons: string[]
  /** Non-blocking remarks: 'TLS destructors pending', 'static TLS'. */
  warnings: string[]
  abi: Abi | null
  entry: string | null
  nodelete: boolean
  gnuUnique: string[]
  tls: boolean
  threadAtexit: boolean
  goRuntime: boolean
  staticTls: boolean
  exports: string[]
  needed: string[]
  soname?: string
  /** The machine it was built for, e.g. 'x86-64', 'AArch64'. */
  machine: string
  class: 32 | 64
  endian: 'le' | 'be'
  /** Can two copies (versions) be loaded side by side in one process? */
  canCoexist: boolean
  /** Why not, when canCoexist is false: 'Go runtime', 'GNU_UNIQUE'. */
  coexistBlockers: string[]
  /** Could this process dlopen it at all (machine, class, byte order, a shared object)? */
  loadable: boolean
  /** Why not, when loadable is false (the ERR_WRONG_ARCH / ERR_NOT_ELF message). */
  loadError?: { code: string, message: string }
  /**
   * What the 'auto' reload rule (rules.ts) picks from these facts: 'shadow'
   * (coexists and unloads), 'drain' (unloads but cannot coexist), 'restart'
   * (never leaves the process: only a new process takes the next build).
   */
  autoStrategy: 'shadow' | 'drain' | 'restart'
  /** Would open()/load()/reloadable() trust this file by default (trust.ts)? */
  trusted: boolean
  /** Why not, when trusted is false: the offending path and the reason. */
  untrusted?: string
}

/**
 * Reads the ELF file at `path` and diagnoses it. A library built for another
 * machine is still diagnosed (`loadable: false`, with `loadError`); a file
 * that is not an ELF shared object is an error.
 *
 * Errors: TypeError `ERR_INVALID_ARG_TYPE` (path not a string);
 * DlhostError `ERR_NOT_FOUND`, `ERR_IS_DIRECTORY`, `ERR_ACCESS`, `ERR_NOT_ELF`
 * (not ELF, truncated, or not ET_DYN), `ERR_INVALID_ARG` (empty path, NUL byte).
 */
export async function inspect (path: string): Promise<InspectReport> {
  if (typeof path !== 'string') throw typeError(`inspect(path): path must be a string, got ${path === null ? 'null' : typeof path}`)
  const info = await readElfFile(path)
  if (info.type !== 'ET_DYN') {
    throw new DlhostError('ERR_NOT_ELF', `${path}: not a shared object (${info.type})`, { path, reason: `not a shared object (${info.type})` })
  }
  let loadError: { code: string, message: string } | undefined
  try {
    checkHostCompatible(info, path)
  } catch (err) {
    if (!(err instanceof DlhostError)) throw err
    loadError = { code: err.code, message: err.message }
  }
  const reasons: string[] = stuckReasons(info)
  const hard: string[] = unloadBlockers(info)
  const warnings = reasons.filter(r => !hard.includes(r))
  if (info.staticTls) warnings.push('static TLS')
  const verdict: Verdict = hard.length > 0 ? 'stuck' : reasons.length > 0 ? 'conditional' : 'unloadable'
  const blockers: string[] = coexistBlockers(info)
  const { abi, entry } = detectAbi(info)
  const report: InspectReport = {
    path,
    unloadable: hard.length === 0,
    verdict,
    reasons,
    warnings,
    abi,
    entry,
    nodelete: info.nodelete,
    gnuUnique: info.gnuUnique,
    tls: info.tls,
    threadAtexit: info.threadAtexit,
    goRuntime: info.goRuntime,
    staticTls: info.staticTls,
    exports: info.exports,
    needed: info.needed,
    machine: info.machineName,
    class: info.class,
    endian: info.endian,
    canCoexist: blockers.length === 0,
    coexistBlockers: blockers,
    loadable: loadError === undefined,
    autoStrategy: autoStrategy(info),
    trusted: untrustedReason(path) === null
  }
  const why = untrustedReason(path)
  if (why !== null) report.untrusted = `${why.path}: ${why.reason}`
  if (info.soname !== undefined) report.soname = info.soname
  if (loadError !== undefined) report.loadError = loadError
  return report
}
