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
  ERR_ABORTED: 'ERR_ABORTED',
  ERR_CLOSED: 'ERR_CLOSED',
  ERR_COPY: 'ERR_COPY',
  ERR_INVALID_ARG: 'ERR_INVALID_ARG'
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
  /** Why a library could not leave the process (ERR_STUCK). */
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

/** A RangeError with a code, for arguments out of range. */
export function rangeError (message: string): RangeError & { code: 'ERR_OUT_OF_RANGE' } {
  const e = new RangeError(message) as RangeError & { code: 'ERR_OUT_OF_RANGE' }
  e.code = 'ERR_OUT_OF_RANGE'
  return e
}

/** Native code throws plain Errors with `code` and `loaderMessage`; this makes them DlhostErrors. */
export function fromNative (err: unknown, path?: string): unknown {
  if (err instanceof DlhostError || !(err instanceof Error)) return err
  const e = err as Error & { code?: unknown, loaderMessage?: string, rc?: number, detail?: Buffer }
  if (typeof e.code !== 'string' || !(e.code in codes)) return err
  return new DlhostError(e.code as DlhostErrorCode, err.message, {
    path, loaderMessage: e.loaderMessage, rc: e.rc, detail: e.detail
  })
}
