/**
 * Errors: the stable codes, the DlhostError class, coded TypeError and
 * RangeError, the one errno → code mapping, and the conversion of the
 * native side's errors. Every error dlhost raises is made here.
 */
import { resolve as resolvePath } from 'path'

/** Stable error codes. Every error dlhost raises carries one of these. */
export const codes = {
  ERR_NOT_FOUND: 'ERR_NOT_FOUND',
  ERR_IS_DIRECTORY: 'ERR_IS_DIRECTORY',
  ERR_ACCESS: 'ERR_ACCESS',
  ERR_NOT_ELF: 'ERR_NOT_ELF',
  ERR_WRONG_ARCH: 'ERR_WRONG_ARCH',
  ERR_DLOPEN: 'ERR_DLOPEN',
  ERR_STALE_PATH: 'ERR_STALE_PATH',
  ERR_SYMBOL_MISSING: 'ERR_SYMBOL_MISSING',
  ERR_INIT_FAILED: 'ERR_INIT_FAILED',
  ERR_RUNTIME_UNLOADED: 'ERR_RUNTIME_UNLOADED',
  ERR_QUEUE_FULL: 'ERR_QUEUE_FULL',
  ERR_PLUGIN: 'ERR_PLUGIN',
  ERR_NOT_SYNC: 'ERR_NOT_SYNC',
  ERR_RELEASED: 'ERR_RELEASED',
  ERR_STUCK: 'ERR_STUCK',
  /** The file, or a directory on its real path, is owned or writable by another user (see trust.ts). */
  ERR_UNTRUSTED: 'ERR_UNTRUSTED',
  /** strategy 'shadow' for a library whose second copy would abort the process (Go, an embedded interpreter). */
  ERR_CANNOT_COEXIST: 'ERR_CANNOT_COEXIST',
  ERR_ABORTED: 'ERR_ABORTED',
  /** An isolated plugin's child process died (a signal, an exit, a limit): its calls reject with this. */
  ERR_PLUGIN_CRASHED: 'ERR_PLUGIN_CRASHED',
  /** An isolated plugin crashed too often in a window: not restarted until reload(). */
  ERR_CRASH_LOOP: 'ERR_CRASH_LOOP',
  /** A probe load of a new build in a throwaway child process crashed or failed. */
  ERR_PROBE_FAILED: 'ERR_PROBE_FAILED',
  /** A new version refused the state the serving one handed over (dlhost_state_import rc != 0), or cannot import it. */
  ERR_STATE_REJECTED: 'ERR_STATE_REJECTED',
  /** The serving version could not export its state (dlhost_state_export rc != 0): the reload is refused. */
  ERR_STATE_EXPORT: 'ERR_STATE_EXPORT',
  /** A canary reload was rolled back (its error rate or latency), or its bytes were rolled back before. */
  ERR_ROLLED_BACK: 'ERR_ROLLED_BACK',
  /** promote() / rollback() without a canary running. */
  ERR_NO_CANARY: 'ERR_NO_CANARY',
  /** The call got no answer within its timeoutMs. */
  ERR_TIMEOUT: 'ERR_TIMEOUT',
  ERR_CLOSED: 'ERR_CLOSED',
  ERR_COPY: 'ERR_COPY',
  /** A watched build settled and stayed an incomplete ELF file. */
  ERR_INCOMPLETE: 'ERR_INCOMPLETE',
  /** A build larger than maxBuildBytes (never read into memory). */
  ERR_BUILD_TOO_LARGE: 'ERR_BUILD_TOO_LARGE',
  ERR_INVALID_ARG: 'ERR_INVALID_ARG',
  /** A thread (or memory) the operation needs could not be had. */
  ERR_RESOURCE: 'ERR_RESOURCE',
  /** A plugin's answer is larger than a Buffer can be (buffer.constants.MAX_LENGTH). */
  ERR_RESPONSE_TOO_LARGE: 'ERR_RESPONSE_TOO_LARGE',
  /** The native side raised a code this table does not know: a dlhost bug. */
  ERR_INTERNAL: 'ERR_INTERNAL'
} as const

export type DlhostErrorCode = keyof typeof codes

export interface DlhostErrorOptions {
  path?: string
  /** The loader's own message (dlerror()), or the OS error text. */
  loaderMessage?: string
  rc?: number
  detail?: Buffer
  reason?: string
  cause?: unknown
}

/** The one error class of dlhost: a stable `code`, the `path` involved, and the loader's message. */
export class DlhostError extends Error {
  readonly code: DlhostErrorCode
  readonly path?: string
  readonly loaderMessage?: string
  /** A plugin's or an init's return code (ERR_PLUGIN, ERR_INIT_FAILED). */
  readonly rc?: number
  /** A failing plugin's response body (ERR_PLUGIN). */
  readonly detail?: Buffer
  /** Why a library could not leave the process (ERR_STUCK), or what is wrong with a file. */
  readonly reason?: string

  constructor (code: DlhostErrorCode, message: string, opts: DlhostErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'DlhostError'
    this.code = code
    if (opts.path !== undefined) this.path = opts.path
    if (opts.loaderMessage !== undefined) this.loaderMessage = opts.loaderMessage
    if (opts.rc !== undefined) this.rc = opts.rc
    if (opts.detail !== undefined) this.detail = opts.detail
    if (opts.reason !== undefined) this.reason = opts.reason
  }
}

/** A TypeError with a code, for arguments of the wrong type. */
export function typeError (message: string): TypeError & { code: 'ERR_INVALID_ARG_TYPE' } {
  const e = new TypeError(message) as TypeError & { code: 'ERR_INVALID_ARG_TYPE' }
  e.code = 'ERR_INVALID_ARG_TYPE'
  return e
}

const PREVIEW_CHARS = 160
const PREVIEW_BYTES = 32

/** A plugin's error body for a message: its text when it is printable UTF-8, else a short hex preview. */
export function previewDetail (detail: Uint8Array): string {
  if (detail.length === 0) return 'no detail'
  let text: string | null = null
  // stream: a character cut by the window is left out, not taken for binary.
  try { text = new TextDecoder('utf-8', { fatal: true }).decode(detail.subarray(0, PREVIEW_CHARS * 4), { stream: true }) } catch {}
  // eslint-disable-next-line no-control-regex -- control characters mark binary
  if (text !== null && !/[\x00-\x08\x0b-\x1f\x7f]/.test(text)) {
    const chars = [...text]
    const shown = chars.slice(0, PREVIEW_CHARS).join('')
    return JSON.stringify(shown) + (chars.length > PREVIEW_CHARS || detail.length > PREVIEW_CHARS * 4 ? ` … (${detail.length} bytes)` : '')
  }
  const hex = Buffer.from(detail.buffer, detail.byteOffset, Math.min(detail.length, PREVIEW_BYTES)).toString('hex').replace(/(..)(?!$)/g, '$1 ')
  return `<${hex}${detail.length > PREVIEW_BYTES ? ' …' : ''}> (${detail.length} bytes)`
}

/** ERR_PLUGIN: the plugin answered with a nonzero rc; its body is the detail. */
export function pluginError (path: string, rc: number, detail: Buffer): DlhostError {
  return new DlhostError('ERR_PLUGIN', `${path}: the plugin returned rc ${rc}: ${previewDetail(detail)}`, { path, rc, detail })
}

/**
 * DLHOST_CALL_SITES=1 in the environment (read at start-up): a call's
 * rejection carries the stack of the call() that made it. Off by default:
 * capturing a stack costs about a microsecond per call, and an answer
 * arrives on a later turn, where the caller's frames are gone.
 */
export const callSites = process.env.DLHOST_CALL_SITES === '1'

/** Gives `p`'s rejection the stack of the call that made it (frames above `fn`). */
export function withCallSite<T> (p: Promise<T>, fn: Function): Promise<T> {
  const site: { stack?: string } = {}
  Error.captureStackTrace(site, fn)
  return p.catch((err: unknown) => {
    if (err instanceof Error && typeof site.stack === 'string') {
      const head = err.stack?.split('\n    at ')[0] ?? `${err.name}: ${err.message}`
      err.stack = head + site.stack.slice(site.stack.indexOf('\n'))
    }
    throw err
  })
}

/** A TypeError with the code ERR_INVALID_ARG, for a value no type can describe (an empty path, an unknown option). */
export function invalidArg (message: string): TypeError & { code: 'ERR_INVALID_ARG' } {
  const e = new TypeError(message) as TypeError & { code: 'ERR_INVALID_ARG' }
  e.code = 'ERR_INVALID_ARG'
  return e
}

/** A RangeError with a code, for arguments out of range. */
export function rangeError (message: string): RangeError & { code: 'ERR_OUT_OF_RANGE' } {
  const e = new RangeError(message) as RangeError & { code: 'ERR_OUT_OF_RANGE' }
  e.code = 'ERR_OUT_OF_RANGE'
  return e
}

// ─── errno → code: the one mapping ────────────────────────────────────────

const ERRNO_CODES: Record<string, DlhostErrorCode> = {
  ENOENT: 'ERR_NOT_FOUND',
  ENOTDIR: 'ERR_NOT_FOUND',
  ELOOP: 'ERR_NOT_FOUND',
  ENAMETOOLONG: 'ERR_NOT_FOUND',
  EISDIR: 'ERR_IS_DIRECTORY',
  EACCES: 'ERR_ACCESS',
  EPERM: 'ERR_ACCESS',
  EROFS: 'ERR_ACCESS',
  EIO: 'ERR_ACCESS',
  EMFILE: 'ERR_ACCESS',
  ENFILE: 'ERR_ACCESS'
}

const ERRNO_WHAT: Partial<Record<DlhostErrorCode, string>> = {
  ERR_NOT_FOUND: 'no such file',
  ERR_IS_DIRECTORY: 'is a directory',
  ERR_ACCESS: 'cannot read'
}

/**
 * Where a missing path was looked for: paths are file paths, resolved
 * against the cwd; there is no search path (LD_LIBRARY_PATH, ld.so.cache)
 * as dlopen("libfoo.so") has.
 */
function notFoundHint (path: string): string {
  const cwd = process.cwd()
  let hint = `; resolved to ${resolvePath(path)} (cwd ${cwd})`
  if (!path.includes('/')) hint += `; a path is a file path: no library search path is used, unlike dlopen("${path}")`
  return hint
}

function errnoOf (err: unknown): string | undefined {
  const c = (err as { code?: unknown } | null)?.code
  return typeof c === 'string' && c.startsWith('E') && !c.startsWith('ERR_') ? c : undefined
}

/**
 * A file-system error (an fs error, or the errno name the native side
 * reports) as a coded DlhostError: missing → ERR_NOT_FOUND, a directory →
 * ERR_IS_DIRECTORY, unreadable or out of descriptors → ERR_ACCESS, anything
 * else → `fallback` (ERR_ACCESS unless the caller knows better, e.g.
 * ERR_COPY while writing a copy).
 */
export function errnoError (err: unknown, path: string, fallback: DlhostErrorCode = 'ERR_ACCESS', errno = errnoOf(err)): DlhostError {
  const mapped = errno !== undefined ? ERRNO_CODES[errno] : undefined
  const code = mapped ?? fallback
  const msg = err instanceof Error ? err.message : String(err)
  const what = mapped !== undefined ? ERRNO_WHAT[mapped] : undefined
  let text = what !== undefined ? `${path}: ${what} (${errno ?? 'unknown'})` : `${path}: ${msg}`
  if (mapped === 'ERR_NOT_FOUND' && path !== '') text += notFoundHint(path)
  return new DlhostError(code, text, { path, loaderMessage: msg, cause: err })
}

/**
 * Any error as a DlhostError, for events whose listeners are promised one:
 * an errno error gets its file-system code, anything else ERR_INTERNAL with
 * the original as `cause`.
 */
export function asDlhostError (err: unknown, path: string): DlhostError {
  if (err instanceof DlhostError) return err
  if (errnoOf(err) !== undefined) return errnoError(err, path)
  return new DlhostError('ERR_INTERNAL', err instanceof Error ? err.message : String(err), { path, cause: err })
}

/** The one rule for a path that is not a regular file (a FIFO, a device, a socket). */
export function notRegularError (path: string): DlhostError {
  const reason = 'not a regular file'
  return new DlhostError('ERR_NOT_ELF', `${path}: ${reason}`, { path, reason })
}

/**
 * Native code throws plain Errors with `code` (or an errno name as
 * `errnoCode`) and `loaderMessage`; this makes them DlhostErrors. A code
 * this table does not know is ERR_INTERNAL, never dropped.
 */
export function fromNative (err: unknown, path?: string): unknown {
  // Argument errors (TypeError, RangeError) keep their class and code.
  if (err instanceof DlhostError || !(err instanceof Error) || err instanceof TypeError || err instanceof RangeError) return err
  const e = err as Error & { code?: unknown, errnoCode?: unknown, loaderMessage?: string, rc?: number, detail?: Buffer }
  if (typeof e.errnoCode === 'string') return errnoError(err, path ?? '', 'ERR_ACCESS', e.errnoCode)
  if (typeof e.code !== 'string') return err
  const known = Object.prototype.hasOwnProperty.call(codes, e.code)
  return new DlhostError(known ? e.code as DlhostErrorCode : 'ERR_INTERNAL', known ? err.message : `${err.message} (native code ${e.code})`, {
    path, loaderMessage: e.loaderMessage, rc: e.rc, detail: e.detail
  })
}
