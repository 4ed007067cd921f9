/**
 * The native binding, typed by hand. Loaded with node-gyp-build from the
 * package root: prebuilds/<platform>-<arch>/ first, then build/Release.
 * Every function here runs on the calling JS thread.
 */
import path from 'path'
import nodeGypBuild from 'node-gyp-build'

/** The registry's row for one library identity (process-wide counts). */
export interface NativeRow {
  serial: number
  realPath: string
  dev: number
  ino: number
  size: number
  mtimeMs: number
  /** `${dev}:${ino}:${size}:${mtimeNs}`: with realPath, the identity. */
  key: string
  refs: number
  runtimes: number
  pinned: boolean
  /** Measured with dl_iterate_phdr by path. */
  mapped: boolean
  /** dlclose ran (a row that is dlclosed and mapped is stuck). */
  dlclosed: boolean
}

export interface NativeReleaseResult {
  dlclosed: boolean
  mapped: boolean
}

/** One open() reference. Its finalizer releases it if release() never ran. */
export interface NativeLibrary {
  readonly realPath: string
  readonly dev: number
  readonly ino: number
  readonly size: number
  readonly mtimeMs: number
  readonly key: string
  readonly serial: number
  state (): NativeRow
  has (symbol: string): boolean
  /** null when this reference was already released. */
  release (): NativeReleaseResult | null
  pin (): void
}

export const OPEN_PIN = 1
export const OPEN_GLOBAL = 2
export const OPEN_LAZY = 4

export const ABI_HOST = 0
export const ABI_NATIVE = 1
export const ABI_LUA = 2

/** Completed calls of one batch: meta holds [id, rc, offset, length] per call. */
export type CompleteCallback = (count: number, meta: Int32Array, bodies: ArrayBuffer | undefined, bigs: Array<Buffer | undefined> | undefined) => void

export interface NativeUnloadInfo {
  dlclosed: boolean
  mapped: boolean
  threadsStuck: boolean
  misuse: number
  aborted: number
}

export type EventCallback = ((kind: 'init', rc: number) => void) & ((kind: 'unloaded', info: NativeUnloadInfo) => void)

export interface NativeStats {
  queued: number
  inFlight: number
  misuse: number
  aborted: number
  pollers: number
}

/** One runtime: request queue, poll thread(s), completion doorbell. */
export interface NativeRuntime {
  /** null: host-driven, init result arrives as an 'init' event; else init's rc. */
  start (cfg: Buffer): number | null
  /**
   * Queues staged calls: `staged` holds [slot, len] pairs, len being the
   * bytes the JS side wrote into the slot's inline area (NUL after them) or
   * -1 for a request handed to setBig(). Returns how many were queued (a
   * prefix) or -2 if the runtime is closed.
   */
  submit (staged: Int32Array, count: number): number
  /** 256 more slots; returns their inline request area (128 bytes per slot, owned by the native core). */
  grow (): ArrayBuffer
  /** Copies a request too big for the inline area into the slot (before submit). */
  setBig (slot: number, req: string | Uint8Array): void
  /** Runs the handler; the answer is described by syncMeta() [slab generation, offset or -1, length, rc]. */
  callSync (req: string | Uint8Array): void
  /** callSync for Uint8Array requests as a plain function (no unwrap, no type dispatch); call it only while this object is alive. */
  syncBytes (): (req: Uint8Array) => void
  /** The Int32Array callSync writes its answer's place into (created once). */
  syncMeta (): Int32Array
  /** The slab small callSync answers are copied into (a new one per generation). */
  syncSlab (): ArrayBuffer
  /** A big callSync answer (offset -1), handed over without a copy. */
  takeBig (): Buffer
  unload (): void
  stats (): NativeStats
  setSpin (jsSpinNs?: number, pollerSpinNs?: number): void
}

export interface NativeBinding {
  abiVersion: number
  Library: new (path: string, flags: number) => NativeLibrary
  Runtime: new (library: NativeLibrary, abi: number, maxQueue: number,
    onComplete: CompleteCallback, onEvent: (kind: string, info: number | NativeUnloadInfo) => void,
    unloadTimeoutMs: number) => NativeRuntime
  libraries (): NativeRow[]
  isMapped (path: string): boolean
}

export const binding: NativeBinding = nodeGypBuild(path.join(__dirname, '..')) as NativeBinding
