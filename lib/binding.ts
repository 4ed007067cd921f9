/**
 * The native binding, typed by hand. Loaded with node-gyp-build from the
 * package root: prebuilds/<platform>-<arch>/ first, then build/Release.
 * Every function here runs on the calling JS thread.
 */
import path from 'path'
import { constants } from 'buffer'
import nodeGypBuild from 'node-gyp-build'

/** What a library is: the file behind the real path when it was opened. */
export interface NativeIdentity {
  realPath: string
  dev: number
  ino: number
  size: number
  mtimeMs: number
  mtimeNs: bigint
  /** "dev:ino:size:mtimeNs", made by the native side only: with realPath, the identity. */
  key: string
}

/** The registry's row for one library identity (process-wide counts). */
export interface NativeRow extends NativeIdentity {
  serial: number
  refs: number
  runtimes: number
  pinned: boolean
  /** Measured with dl_iterate_phdr by path. */
  mapped: boolean
  /** dlclose ran (a row that is dlclosed and mapped is stuck). */
  dlclosed: boolean
  /** A runtime's plugin threads outlived its unload: kept mapped for ever. */
  threadsStuck: boolean
}

export interface NativeReleaseResult {
  dlclosed: boolean
  mapped: boolean
}

/** One open() reference. Its finalizer releases it if release() never ran. */
export interface NativeLibrary extends Readonly<NativeIdentity> {
  readonly serial: number
  state (): NativeRow
  has (symbol: string): boolean
  /** null when this reference was already released. */
  release (): NativeReleaseResult | null
  pin (): void
}

/** Layout, protocol constants and defaults: csrc/constants.h is their one home. */
export interface NativeConstants {
  /** Inline request bytes per slot (NUL included). */
  SLOT_STRIDE: number
  /** Longest request written inline (SLOT_STRIDE - 1). */
  SLOT_INLINE: number
  /** Slots per grow(). */
  CHUNK_SLOTS: number
  CHUNK_BITS: number
  /** Completion meta length of a call that was never answered. */
  ABORTED_LEN: number
  /** Completion meta offset of a body handed over as its own Buffer. */
  BIG_OFFSET: number
  /** callSync meta offset of a big answer (takeBig()). */
  SYNC_BIG_OFFSET: number
  /** Completion meta offset of an answer longer than a Buffer can be (freed, refused). */
  TOO_LARGE_OFFSET: number
  /** The same for callSync. */
  SYNC_TOO_LARGE_OFFSET: number
  /** submit() result when the runtime is closed. */
  SUBMIT_CLOSED: number
  /** stateTask() kinds: run dlhost_state_export / dlhost_state_import in queue order. */
  TASK_STATE_EXPORT: number
  TASK_STATE_IMPORT: number
  /** The rc of a state step whose entry the plugin does not export. */
  RC_NO_STATE_ENTRY: number
  /** Latency histograms (csrc/histogram.h): sub-buckets per power of two (log2), first and last power. */
  HIST_SUB_BITS: number
  HIST_MIN_LOG: number
  HIST_MAX_LOG: number
  /** Messages waiting for JS per runtime before dlhost_emit refuses. */
  DEFAULT_MAX_MESSAGES: number
  /** The largest message dlhost_emit takes. */
  MAX_MESSAGE_BYTES: number
  ABI_HOST: number
  ABI_NATIVE: number
  ABI_LUA: number
  OPEN_PIN: number
  OPEN_GLOBAL: number
  OPEN_LAZY: number
  /** The path is a private copy nobody else can replace (the mapping check after dlopen is skipped). */
  OPEN_PRIVATE: number
  DEFAULT_SPIN_NS: number
  DEFAULT_MAX_QUEUE: number
  MAX_MAX_QUEUE: number
  DEFAULT_UNLOAD_TIMEOUT_MS: number
  DEFAULT_SETTLE_MS: number
  ABI_VERSION: number
}

/**
 * Completed calls: meta holds [id, rc, offset, length] per call. With
 * `batch` (a handle given to submit()), they are all of that callBatch()'s
 * queued items, in order.
 */
export type CompleteCallback = (count: number, meta: Int32Array, bodies: ArrayBuffer | undefined, bigs: Array<Buffer | undefined> | undefined, batch: number | undefined) => void

export interface NativeUnloadInfo {
  dlclosed: boolean
  mapped: boolean
  threadsStuck: boolean
  misuse: number
  aborted: number
}

/** Why an init failed: its rc, no thread or memory to be had, or dlhost_open returned NULL. */
export type InitFailure = 'rc' | 'resource' | 'open-null'
export type EventCallback = (kind: string, info: number | NativeUnloadInfo, failure?: InitFailure) => void

export interface NativeStats {
  queued: number
  misuse: number
  aborted: number
  pollers: number
  /** dlhost_emit calls refused (the queue was full, or the runtime had ended). */
  messagesRefused: number
  /** The estimate of recent gaps between submitted batches (adaptive spinning). */
  callGapNs: number
  /** Poll-thread waits that parked at once, skipping the spin. */
  parksAtOnce: number
  jsParksAtOnce: number
}

/** One runtime: request queue, poll thread(s), completion doorbell. */
export interface NativeRuntime {
  /** Starts init on the library's owner thread; its result arrives as an 'init' event. */
  start (cfg: Buffer): null
  /**
   * Queues staged calls: `staged` holds [slot, len] pairs, len being the
   * bytes the JS side wrote into the slot's inline area (NUL after them) or
   * -1 for a request handed to setBig(). Returns how many were queued (a
   * prefix) or SUBMIT_CLOSED if the runtime is closed. With `batch` (a
   * handle, not in flight), they are one callBatch()'s items: answered,
   * they come back together, in one CompleteCallback.
   */
  submit (staged: Int32Array, count: number, batch?: number): number
  /** CHUNK_SLOTS more slots; returns their inline request area (SLOT_STRIDE bytes per slot, owned by the native core). */
  grow (): ArrayBuffer
  /**
   * Int32Array [pending]: the calls made and not settled, written by the
   * TypeScript side (the one count); the native side reads it to keep the
   * event loop alive while calls are in flight.
   */
  counters (): Int32Array
  /** Copies a request too big for the inline area into the slot (before submit). */
  setBig (slot: number, req: string | Uint8Array): void
  /** The free slot's next task is a state step (TASK_STATE_*), staged and submitted like a call. */
  setKind (slot: number, kind: number): void
  /** The caller gave up on the call in this slot: dlhost_task_cancelled() says so to the plugin. */
  cancel (slot: number): void
  /** Messages flow to JS (true) or wait in the bounded native queue (false). */
  messageFlow (on: boolean): void
  /** Keep the event loop alive for messages (a listener or an iterator). */
  messagesRef (on: boolean): void
  /** The free slot's next call is a stream whose reader buffers at most `hwm` chunks. */
  setStream (slot: number, hwm: number): void
  /** The stream's reader took n chunks. */
  streamRead (slot: number, n: number): void
  /** Call latencies counted into a Float64Array (csrc/histogram.h's layout) while on; null when off. */
  histogram (on: boolean): Float64Array | null
  /** Runs the handler; the answer is described by syncMeta() [slab generation, offset or SYNC_BIG_OFFSET, length, rc]. */
  callSync (req: string | Uint8Array): void
  /** callSync for Uint8Array requests as a plain function (no unwrap, no type dispatch); call it only while this object is alive. */
  syncBytes (): (req: Uint8Array) => void
  /** The Int32Array callSync writes its answer's place into (created once). */
  syncMeta (): Int32Array
  /** The slab small callSync answers are copied into (a new one per generation). */
  syncSlab (): ArrayBuffer
  /** A big callSync answer (offset SYNC_BIG_OFFSET), handed over without a copy. */
  takeBig (): Buffer
  unload (): void
  stats (): NativeStats
  setSpin (jsSpinNs?: number, pollerSpinNs?: number): void
}

/** A batch of plugin messages: [offset, length] pairs into `bodies` (JS thread). */
export type MessagesCallback = (count: number, meta: Int32Array, bodies: ArrayBuffer) => void

/** A batch of stream chunks: [call id, offset, length] triples into `bodies` (JS thread). */
export type ChunksCallback = (count: number, meta: Int32Array, bodies: ArrayBuffer) => void

export interface NativeBinding {
  abiVersion: number
  constants: NativeConstants
  Library: new (path: string, flags: number) => NativeLibrary
  Runtime: new (library: NativeLibrary, abi: number, maxQueue: number,
    onComplete: CompleteCallback, onEvent: EventCallback,
    unloadTimeoutMs: number, onMessages: MessagesCallback, onChunks: ChunksCallback) => NativeRuntime
  libraries (): NativeRow[]
  isMapped (path: string): boolean
  /** The identity open() would give the file now (realpath + stat). */
  identify (path: string): NativeIdentity
  /** Tells the addon buffer.constants.MAX_LENGTH (once, at load). */
  configure (maxBufferLength: number): void
  /** A private directory to remove (depth first, no links followed) when this environment goes; `on: false` forgets it. */
  trackDir (dir: string, on: boolean): void
}

export const binding: NativeBinding = nodeGypBuild(path.join(__dirname, '..')) as NativeBinding
binding.configure(constants.MAX_LENGTH)
export const C: Readonly<NativeConstants> = binding.constants
