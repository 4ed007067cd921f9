/**
 * The rules every level applies to a library's static facts: which plugin
 * ABI its entry symbol offers, whether this process can load it, why it
 * would stay mapped after dlclose, whether two versions may coexist, and
 * what 'auto' does on a reload. `open()`, `load()`, `reloadable()`,
 * `inspect()` and the CLI all ask here; nothing else restates a rule.
 * Pure TypeScript, no native code: usable where the addon is not loaded.
 */
import * as os from 'os'
import { DlhostError } from './errors'
import { ElfInfo, machineName } from './elf'
import { closest } from './options'

// ─── plugin ABIs ──────────────────────────────────────────────────────────

/** The three ways a plugin can be driven (docs/architecture.md). */
export type Abi = 'native' | 'host' | 'lua-resty-ffi'

/** Each ABI's entry symbol. */
export const ENTRY: Readonly<Record<Abi, string>> = Object.freeze({
  native: 'dlhost_init',
  host: 'dlhost_handle',
  'lua-resty-ffi': 'libffi_init'
})

/**
 * Detection order when a library exports more than one entry: the native
 * (plugin-driven) ABI first, then host-driven, then lua-resty-ffi's.
 */
export const ABI_PRECEDENCE: readonly Abi[] = Object.freeze(['native', 'host', 'lua-resty-ffi'])

export function isAbi (x: unknown): x is Abi {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(ENTRY, x)
}

/**
 * The ABI a library offers, by its exported entry symbols (`has` answers
 * for one symbol: from ELF facts, or from dlsym on a loaded library).
 */
export function abiOf (has: (symbol: string) => boolean): { abi: Abi | null, entry: string | null } {
  for (const abi of ABI_PRECEDENCE) {
    if (has(ENTRY[abi])) return { abi, entry: ENTRY[abi] }
  }
  return { abi: null, entry: null }
}

/** The optional state hand-over entries (dlhost.h, "state across reloads"). */
export const STATE_EXPORT = 'dlhost_state_export'
export const STATE_IMPORT = 'dlhost_state_import'

/**
 * Whether a version hands its state over at a reload and takes one in:
 * dlhost's own two ABIs only (a lua-resty-ffi plugin loads unmodified, and
 * its ABI has no such entries).
 */
export function stateEntries (info: ElfInfo, abi: Abi): { exports: boolean, imports: boolean } {
  if (abi === 'lua-resty-ffi') return { exports: false, imports: false }
  const exported = new Set(info.exports)
  return { exports: exported.has(STATE_EXPORT), imports: exported.has(STATE_IMPORT) }
}

/** abiOf() over a parsed file's exports. */
export function detectAbi (info: ElfInfo): { abi: Abi | null, entry: string | null } {
  const exported = new Set(info.exports)
  return abiOf(s => exported.has(s))
}

/**
 * ERR_SYMBOL_MISSING for a library that exports none of `wanted` (every
 * ABI's entry, or the one asked for), with the likely fix: an entry compiled
 * as C++ is exported mangled (`_Z13dlhost_handlePKcmPPcPm`) and needs
 * `extern "C"`; a near miss (`dlhost_handler`) is named.
 */
export function noEntryError (path: string, symbols: readonly string[], wanted: readonly string[] = ABI_PRECEDENCE.map(a => ENTRY[a])): DlhostError {
  const what = wanted.length === 1 ? `does not export ${wanted[0]}` : `exports no plugin entry (${wanted.join(', ')})`
  let hint = ''
  for (const name of wanted) {
    const mangled = symbols.find(s => s.startsWith(`_Z${name.length}${name}`) || (s.startsWith('_ZN') && s.includes(`${name.length}${name}E`)))
    if (mangled !== undefined) {
      hint = `: it exports ${mangled}, ${name} with a C++-mangled name; declare it extern "C" (include dlhost.h, whose prototypes are extern "C")`
      break
    }
  }
  if (hint === '') {
    const near = symbols.map(s => ({ s, c: closest(s, wanted) })).find(x => x.c !== null && x.s.length > 4)
    if (near !== undefined) hint = `: it exports ${near.s}; did you mean ${String(near.c)}?`
  }
  return new DlhostError('ERR_SYMBOL_MISSING', `${path} ${what}${hint}`, { path })
}

// ─── can this process load it ─────────────────────────────────────────────

/** process.arch → the ELF this process can load. */
const HOST_MACHINES: Record<string, { machine: number, class: 32 | 64 }> = {
  x64: { machine: 62, class: 64 },
  arm64: { machine: 183, class: 64 },
  ia32: { machine: 3, class: 32 },
  arm: { machine: 40, class: 32 },
  ppc: { machine: 20, class: 32 },
  ppc64: { machine: 21, class: 64 },
  s390: { machine: 22, class: 32 },
  s390x: { machine: 22, class: 64 },
  riscv64: { machine: 243, class: 64 },
  loong64: { machine: 258, class: 64 },
  mips: { machine: 8, class: 32 },
  mipsel: { machine: 8, class: 32 }
}

/** What this process can load: ELF class, byte order and e_machine (undefined machine: unknown arch). */
export function hostElf (): { class: 32 | 64, endian: 'le' | 'be', machine: number | undefined, machineName: string } {
  const m = HOST_MACHINES[process.arch]
  const endian = os.endianness() === 'LE' ? 'le' : 'be'
  const cls: 32 | 64 = m?.class ?? (/64/.test(process.arch) ? 64 : 32)
  return { class: cls, endian, machine: m?.machine, machineName: m !== undefined ? machineName(m.machine) : process.arch }
}

function describe (c: 32 | 64, e: 'le' | 'be', name: string): string {
  return `${name} (ELF${c}, ${e === 'le' ? 'little' : 'big'} endian)`
}

/**
 * Throws unless this process could dlopen the object: `ERR_WRONG_ARCH` when
 * class, byte order or machine differ from this process's; `ERR_NOT_ELF` when
 * it is not a shared object (ET_DYN), or is a position-independent executable.
 */
export function checkHostCompatible (info: ElfInfo, path?: string): void {
  const p = path ?? info.path
  const host = hostElf()
  if (info.class !== host.class || info.endian !== host.endian || (host.machine !== undefined && info.machine !== host.machine)) {
    throw new DlhostError('ERR_WRONG_ARCH',
      `${p ?? 'library'}: built for ${describe(info.class, info.endian, info.machineName)}, this process is ${describe(host.class, host.endian, host.machineName)}`,
      { path: p, reason: `machine ${info.machineName}` })
  }
  if (info.type !== 'ET_DYN') {
    const reason = `not a shared object (${info.type})`
    throw new DlhostError('ERR_NOT_ELF', `${p ?? 'file'}: ${reason}`, { path: p, reason })
  }
  if (info.pie) {
    const reason = 'a position-independent executable, not a shared library (glibc refuses to dlopen it)'
    throw new DlhostError('ERR_NOT_ELF', `${p ?? 'file'}: ${reason}`, { path: p, reason })
  }
}

// ─── unloading and coexisting ─────────────────────────────────────────────

/** Why a library stays mapped after dlclose; see stuckReasons(). */
export type StuckReason = 'NODELETE' | 'GNU_UNIQUE' | 'TLS destructors pending' | 'Go runtime'

/** The run-time reason when a runtime's plugin threads outlived its unload. */
export const THREADS_STUCK = 'plugin threads still running'
/** The reason when a library stayed mapped and its facts name no cause. */
export const STILL_MAPPED = 'still mapped (another object depends on it, or it was loaded outside dlhost)'

/**
 * Why a library would stay mapped after dlclose, in a fixed order:
 * 'NODELETE', 'GNU_UNIQUE', 'TLS destructors pending', 'Go runtime'.
 * An empty array means there is no static reason (dlhost still measures).
 */
export function stuckReasons (info: ElfInfo): StuckReason[] {
  const out: StuckReason[] = []
  if (info.nodelete) out.push('NODELETE')
  if (info.gnuUnique.length > 0) out.push('GNU_UNIQUE')
  if (info.tls && info.threadAtexit) out.push('TLS destructors pending')
  if (info.goRuntime) out.push('Go runtime')
  return out
}

/**
 * The reasons glibc (or the Go runtime's threads) keeps the object mapped
 * whatever the host does. 'TLS destructors pending' is not one of them: it
 * blocks only while a thread that touched the thread_locals lives, and
 * dlhost's poll threads are gone before dlclose (see inspect.ts).
 */
export function unloadBlockers (info: ElfInfo): StuckReason[] {
  return stuckReasons(info).filter(r => r !== 'TLS destructors pending')
}

/** One-line explanations of each reason, for people. */
export const EXPLAIN: Record<string, string> = {
  NODELETE: 'linked with -z nodelete (DF_1_NODELETE); dlclose keeps it mapped for the life of the process. Relink without -z nodelete.',
  GNU_UNIQUE: 'g++ emitted STB_GNU_UNIQUE symbols (inline/template statics); glibc never unloads such a library. Build with -fno-gnu-unique, or hide those symbols.',
  'TLS destructors pending': 'thread_local objects with destructors; glibc keeps it until every thread that touched them has exited. Unloads if only dlhost\'s poll threads touch them; not if the loading thread (a constructor, callSync) does.',
  'Go runtime': 'contains a Go runtime; its threads never stop, dlclose cannot remove it, and a process can hold only one. Reload it by restarting the process.',
  'static TLS': 'uses initial-exec (static) TLS; each loaded copy takes from glibc\'s small static TLS reserve, so many versions side by side can fail to dlopen.'
}

/**
 * Language runtimes that allow one instance per process: a library linking
 * one (DT_NEEDED) shares it with any second copy of itself, so two versions
 * would share (and fight over) one interpreter. lua-resty-ffi's Python loader
 * links libpython.
 */
const ONE_PER_PROCESS: ReadonlyArray<[RegExp, string]> = [
  [/^libpython\d/, 'Python'],
  [/^libjvm\.so/, 'JVM'],
  [/^libnode\.so/, 'Node.js'],
  [/^libruby/, 'Ruby'],
  [/^libperl\.so/, 'Perl'],
  [/^libjulia\.so/, 'Julia'],
  [/^libR\.so/, 'R'],
  [/^libcoreclr\.so/, '.NET'],
  [/^libmonosgen/, 'Mono']
]

/** The one-per-process language runtime the library links, e.g. 'Python (libpython3.11.so.1.0)', or null. */
export function languageRuntime (info: ElfInfo): string | null {
  for (const lib of info.needed) {
    for (const [re, name] of ONE_PER_PROCESS) if (re.test(lib)) return `${name} (${lib})`
  }
  return null
}

/**
 * Why a second copy of the library must never be loaded beside the first:
 * a Go runtime allows one per process (a second one crashes it), and so does
 * an embedded language runtime (Python aborts: its thread state is shared).
 */
export function coexistFatal (info: ElfInfo): string[] {
  const out: string[] = []
  if (info.goRuntime) out.push('Go runtime')
  const lang = languageRuntime(info)
  if (lang !== null) out.push(`one-per-process runtime: ${lang}`)
  return out
}

/**
 * Why two versions may not be loaded side by side: coexistFatal(), and
 * GNU_UNIQUE symbols, which bind a second copy to the first copy's objects
 * (shared, possibly mismatched, state).
 */
export function coexistBlockers (info: ElfInfo): string[] {
  const out = coexistFatal(info)
  if (info.gnuUnique.length > 0) out.splice(info.goRuntime ? 1 : 0, 0, 'GNU_UNIQUE')
  return out
}

/**
 * Why a runtime's plugin threads never leave: a Go runtime's threads never
 * exit (golang/go#11100), so unload need not wait for them.
 */
export function threadsNeverExit (info: ElfInfo): string | null {
  return info.goRuntime ? 'Go runtime' : null
}

/**
 * What 'auto' does on a reload of a library with these facts: 'shadow' (it
 * coexists with itself and unloads), 'drain' (it unloads but cannot
 * coexist), 'restart' (it never leaves the process: only a new process can
 * take the next build).
 */
export function autoStrategy (info: ElfInfo): 'shadow' | 'drain' | 'restart' {
  if (unloadBlockers(info).length > 0) return 'restart'
  return coexistBlockers(info).length === 0 ? 'shadow' : 'drain'
}

/** The strategy a reload of a serving version with facts `serving` takes, or 'restart'. */
export function reloadStrategy (asked: 'auto' | 'shadow' | 'drain', serving: ElfInfo): 'shadow' | 'drain' | 'restart' {
  return asked === 'auto' ? autoStrategy(serving) : asked
}

/**
 * The reason a library stays mapped, as `libraries()` and `Library.stuck`
 * report it: the run-time cause when there is one, else the first static
 * reason, else STILL_MAPPED. null while nothing holds it in place.
 */
export function stuckReason (row: { mapped: boolean, dlclosed: boolean, threadsStuck: boolean }, info: ElfInfo | undefined): string | null {
  if (row.threadsStuck && row.mapped) return threadsStuckReason(info)
  if (!row.dlclosed || !row.mapped) return null
  return (info !== undefined ? stuckReasons(info)[0] : undefined) ?? STILL_MAPPED
}

/** The reason when a runtime's plugin threads outlived its unload. */
export function threadsStuckReason (info: ElfInfo | undefined): string {
  return (info !== undefined ? threadsNeverExit(info) : null) ?? THREADS_STUCK
}
