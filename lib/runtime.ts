/**
 * Level 2: runtimes (lua-resty-ffi's model). One runtime per (library
 * identity, cfg). Calls go through the native lock-free queue; the native side
 * settles a whole batch of finished calls in one callback. JS thread only.
 */
import { createHash } from 'crypto'
import { constants as bufferConstants } from 'buffer'
import { binding, C, InitFailure, NativeIdentity, NativeRuntime, NativeStats, NativeUnloadInfo } from './binding'
import { asDlhostError, callSites, DlhostError, fromNative, pluginError, rangeError, typeError, withCallSite } from './errors'
import { forgetIdentity, KnownContent, Library, LibraryRow, LibraryVersion, open, rowOf } from './library'
import { onAbort } from './events'
import { requestLength } from './request'
import { fail, pending, Resolve, takeResolve } from './settle'
import { bufferView } from './view'
import { MessageHub, MessagesOptions } from './messages'
import { deliverChunks, openStream, StreamOptions, StreamReader } from './stream'
import { latencyBetween, LatencySummary } from './metrics'
import { TypedEmitter } from './events'
import { checkKeys, checkPath } from './options'
import { parseElf } from './elf'
import { errnoError } from './errors'
import { IsolatedRuntime } from './isolate/runtime'
import { checkLimits, Limits } from './isolate/host'
import fs from 'fs'
import { checkTrustOption, Trust } from './trust'
import { Abi, abiOf, ENTRY, isAbi, noEntryError, threadsNeverExit } from './rules'

export type { Abi } from './rules'
export type Cfg = string | Uint8Array | Record<string, unknown> | unknown[] | null | undefined

export interface LoadOptions {
  /** Never dlclose the library (default true, as in lua-resty-ffi). */
  pin?: boolean
  /** RTLD_GLOBAL (lua-resty-ffi's is_global). */
  global?: boolean
  /** Calls queued or running at once before ERR_QUEUE_FULL (default 65536). */
  maxQueue?: number
  /** Force an ABI instead of detecting it from the entry symbol. */
  entry?: Abi
  /** How long unload waits for plugin threads to exit before reporting stuck (default 5000). */
  unloadTimeoutMs?: number
  /** Whose files may be loaded (default: this process's uid and root; see trust.ts). */
  trust?: Trust
  /**
   * 'process': the library lives in a child process (see docs/isolation.md):
   * a crash rejects its calls with ERR_PLUGIN_CRASHED and the child is
   * started again; what can never leave a process (Go, NODELETE) is unloaded
   * by ending the child. Resolves with an IsolatedRuntime.
   */
  isolate?: 'process' | false
  /** Resource limits of an isolated runtime's child (setrlimit; memoryMb: resident memory, watched). */
  limits?: Limits
  /** An isolated runtime stops restarting after maxCrashes crashes within crashWindowMs (default 5 in 10000 ms): ERR_CRASH_LOOP. */
  maxCrashes?: number
  crashWindowMs?: number
  /**
   * Count call latencies (submit to settle) into a histogram (default true):
   * `stats.latency`, and the Plugin's per-version metrics. One clock read
   * per batch of calls on each side; false saves even that.
   */
  metrics?: boolean
  /** @internal See OpenOptions.known. */
  known?: KnownContent
}

/** Every key of LoadOptions: an unknown key is refused (see options.ts). */
const LOAD_KEYS: Record<keyof LoadOptions, true> = {
  pin: true, global: true, maxQueue: true, entry: true, unloadTimeoutMs: true, trust: true, isolate: true, limits: true, maxCrashes: true, crashWindowMs: true, metrics: true, known: true
}

export interface CallOptions {
  /** Rejects the call with ERR_ABORTED; a call already queued still runs, its answer is dropped (and counted: stats.late). */
  signal?: AbortSignal
  /**
   * Rejects the call with ERR_TIMEOUT after this many ms. In process, the
   * plugin may still finish: its answer is dropped and counted (stats.late).
   */
  timeoutMs?: number
  /**
   * Plugin.call() while a canary runs: calls with the same key go to the
   * same version for the whole canary period (sticky routing). Ignored
   * elsewhere.
   */
  key?: string | number
}

const CALL_KEYS: Record<keyof CallOptions, true> = { signal: true, timeoutMs: true, key: true }

export interface RuntimeStats {
  queued: number
  inFlight: number
  completed: number
  failed: number
  /** Plugin misuse that was detected and ignored (a task answered twice, …). */
  misuse: number
  /** Answers that came after their caller gave up (a timeout or an abort) and were dropped. */
  late: number
  /** Messages the plugin emitted that were delivered to JS. */
  messages: number
  /** Calls that timed out (ERR_TIMEOUT); their answers, if they come, count in `late`. */
  timeouts: number
  /** Submit-to-settle latencies over the runtime's life (all zero with metrics: false). */
  latency: LatencySummary
  /**
   * The estimate (an EWMA, ns) of recent gaps between calls reaching the
   * plugin's queue. Above the poller spin budget (50 us) a waiting poll
   * thread parks at once instead of spinning (adaptive spinning;
   * setSpin() turns it off).
   */
  callGapNs: number
  /** Poll-thread waits that parked at once, skipping the spin (the adaptive rule at work). */
  parksAtOnce: number
  /**
   * Submits after which the JS side did not spin for the answer (the same
   * rule: calls are sparse); the event loop sleeps until the answer rings.
   */
  jsParksAtOnce: number
  /** dlhost_emit calls refused: the message queue was full (JS not keeping up), or the runtime had ended. */
  messagesRefused: number
  version: LibraryVersion
}

const ABI_CODES: Record<Abi, number> = { host: C.ABI_HOST, native: C.ABI_NATIVE, 'lua-resty-ffi': C.ABI_LUA }
const EMPTY = Buffer.alloc(0)

// Live runtimes of this environment, by identity + cfg: the strong reference
// that keeps a loaded runtime (and its native handles) alive.
const live = new Map<string, { rt: Runtime, ready: Promise<Runtime> }>()

const CHUNK = C.CHUNK_SLOTS
const CHUNK_BITS = C.CHUNK_BITS
const STRIDE = C.SLOT_STRIDE
const INLINE = C.SLOT_INLINE
const ABORTED_LEN = C.ABORTED_LEN
const BIG_OFFSET = C.BIG_OFFSET
const SYNC_BIG_OFFSET = C.SYNC_BIG_OFFSET
const TOO_LARGE_OFFSET = C.TOO_LARGE_OFFSET
// Calls staged in one turn are submitted together (one N-API call, one queue
// enter/leave, at most one wake-up); a long burst is cut into batches this big
// so the poll thread starts early.
const FLUSH_AT = 64

export function cfgBuffer (cfg: Cfg): Buffer {
  if (cfg === undefined || cfg === null) return EMPTY
  if (typeof cfg === 'string') return Buffer.from(cfg)
  if (cfg instanceof Uint8Array) {
    requestLength(cfg) // a real, attached Uint8Array
    return Buffer.from(cfg.buffer, cfg.byteOffset, cfg.byteLength)
  }
  if (typeof cfg !== 'object') throw typeError('cfg must be a string, a Buffer/Uint8Array, or an object (sent as JSON)')
  let json: string | undefined
  try {
    json = JSON.stringify(cfg)
  } catch (err) {
    const e = typeError(`cfg cannot be sent as JSON: ${(err as Error)?.message ?? String(err)}`)
    ;(e as Error).cause = err
    throw e
  }
  if (typeof json !== 'string') throw typeError('cfg cannot be sent as JSON')
  return Buffer.from(json)
}

/** The call's timeout (ms), checked before anything is submitted; Infinity: none. */
export function callTimeout (options: CallOptions | undefined): number | undefined {
  const t = options?.timeoutMs
  if (t === undefined || t === Infinity) return undefined
  if (typeof t !== 'number' || Number.isNaN(t)) throw typeError('options.timeoutMs must be a number of ms')
  if (!(t > 0) || t > 2 ** 31 - 1) throw rangeError('options.timeoutMs must be > 0 and at most 2147483647 (Infinity: no timeout)')
  return t
}

/** The call's signal, checked (with the whole options object) before anything is submitted. */
export function callSignal (options: CallOptions | undefined): AbortSignal | undefined {
  if (options === undefined) return undefined
  checkKeys(options, CALL_KEYS, 'call() options')
  const { signal, key } = options
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw typeError('options.signal must be an AbortSignal')
  if (key !== undefined && typeof key !== 'string' && typeof key !== 'number') throw typeError('options.key must be a string or a number')
  return signal
}

/** One callBatch(): its results in order, settled once the last item is. */
class Batch {
  results: Array<Buffer | DlhostError>
  pending: number
  promise: Promise<Array<Buffer | DlhostError>>
  #resolve!: (r: Array<Buffer | DlhostError>) => void
  constructor (n: number) {
    this.results = new Array(n)
    this.pending = n
    this.promise = new Promise(resolve => { this.#resolve = resolve })
  }

  /** n more results are in; true once they all are (the promise is then resolved). */
  settled (n: number): boolean {
    this.pending -= n
    if (this.pending !== 0) return false
    this.#resolve(this.results)
    return true
  }
}

/** Runtime's events: 'message' for each dlhost_emit of the plugin (Level 5). */
export interface RuntimeEvents {
  message: [Buffer]
}

export class Runtime extends TypedEmitter<RuntimeEvents> {
  readonly abi: Abi
  readonly path: string
  /** @internal */ readonly key: string
  #native: NativeRuntime
  #version: LibraryVersion
  #serial: number
  #identity: { realPath: string, key: string }
  #res: Array<Resolve | undefined> = []
  #maxQueue: number
  // [pending]: calls made and not yet settled (staged, queued or running).
  // The one count of calls in flight and the one place maxQueue is
  // enforced; the native side reads it to keep the event loop alive.
  #counters: Int32Array
  // Slots: the JS side picks them, FIFO (a freed slot is reused last, which
  // keeps a late second answer from a plugin away from a fresh call).
  #free = new Int32Array(0)
  #freeHead = 0
  #freeCount = 0
  // Inline request bytes, one Buffer per chunk of CHUNK slots.
  #areas: Buffer[] = []
  // Staged calls of this turn: [slot, len] pairs (len -1: set by setBig).
  #staged = new Int32Array(2 * FLUSH_AT)
  #stagedCount = 0
  #flush = (): void => this.#submitStaged()
  #completed = 0
  #failed = 0
  #late = 0
  // Slots whose caller gave up: their answer, when it comes, is dropped.
  #abandoned = new Set<number>()
  #state: 'starting' | 'running' | 'unloading' | 'unloaded' = 'starting'
  #unloaded: Promise<void>
  #resolveUnloaded!: () => void
  #init: Promise<void>
  #resolveInit!: () => void
  #rejectInit!: (e: unknown) => void
  #unloadInfo: NativeUnloadInfo | null = null
  #syncMeta: Int32Array | undefined
  #syncBytes: ((req: Uint8Array) => void) | undefined
  #slab: ArrayBuffer | undefined
  #slabGen = 0

  #messages: MessageHub
  #messageCount = 0
  #timeouts = 0
  #hist: Float64Array | null = null
  // Streams by slot, while the slot is theirs.
  #streams: Array<StreamReader | undefined> = []
  // callBatch() items by slot: their batch's handle (an index into
  // #batches; 0 for none) and their place in it. Typed arrays: storing a
  // number there costs no write barrier, which storing the Batch did.
  #slotBatch = new Int32Array(0)
  #slotItem = new Int32Array(0)
  #batches: Array<Batch | undefined> = [undefined]
  // A batch's [slot, len] pairs for its one submit (undefined while in use).
  #batchStaged: Int32Array | undefined
  #freeBatches: number[] = []

  /** @internal use load() */
  constructor (lib: Library, abi: Abi, cfg: Buffer, key: string, maxQueue: number, unloadTimeoutMs: number, metrics = true) {
    super()
    this.#messages = new MessageHub(this)
    this.abi = abi
    this.path = lib.path
    this.key = key
    this.#version = lib.version
    this.#serial = lib.native.serial
    this.#identity = { realPath: lib.native.realPath, key: lib.native.key }
    this.#maxQueue = maxQueue
    this.#unloaded = new Promise(resolve => { this.#resolveUnloaded = resolve })
    this.#init = new Promise((resolve, reject) => { this.#resolveInit = resolve; this.#rejectInit = reject })
    try {
      this.#native = new binding.Runtime(lib.native, ABI_CODES[abi], maxQueue,
        (count, meta, bodies, bigs, batch) => { if (batch === undefined) this.#complete(count, meta, bodies, bigs); else this.#completeBatch(batch, count, meta, bodies, bigs) },
        (kind, info, failure) => this.#event(kind, info, failure), unloadTimeoutMs,
        (count, meta, bodies) => { this.#messageCount += count; this.#messages.deliver(count, meta, bodies) },
        (count, meta, bodies) => this.#chunks(count, meta, bodies))
    } catch (err) { throw fromNative(err, lib.path) }
    const native = this.#native
    if (metrics) this.#hist = native.histogram(true)
    this.#messages.attach({ flow: on => native.messageFlow(on), ref: on => native.messagesRef(on) })
    this.#counters = this.#native.counters()
    try {
      this.#native.start(cfg)
    } catch (err) { throw fromNative(err, lib.path) }
  }

  #initDone (rc: number, failure: InitFailure): void {
    if (rc === 0) {
      this.#state = 'running'
      this.#resolveInit()
      return
    }
    this.#state = 'unloading'
    // Reject once the runtime has let go of the library, so that a caller
    // who sees the rejection also sees an unpinned library gone.
    const err = failure === 'resource'
      ? new DlhostError('ERR_RESOURCE', `no thread or memory to start the plugin: ${this.path}`, { path: this.path })
      : failure === 'open-null'
        ? new DlhostError('ERR_INIT_FAILED', `dlhost_open returned NULL: ${this.path}`, { path: this.path })
        : new DlhostError('ERR_INIT_FAILED', `plugin init failed with rc ${rc}: ${this.path}`, { path: this.path, rc })
    void this.#unloaded.then(() => this.#rejectInit(err))
  }

  #event (kind: string, info: number | NativeUnloadInfo, failure: InitFailure | undefined): void {
    if (kind === 'init') { this.#initDone(info as number, failure ?? 'rc'); return }
    const u = info as NativeUnloadInfo
    this.#unloadInfo = u
    this.#state = 'unloaded'
    this.#areas = [] // views of native memory that is gone now
    if (u.dlclosed && !u.mapped) forgetIdentity(this.#identity)
    this.#messages.end()
    this.#resolveUnloaded()
  }

  #complete (count: number, meta: Int32Array, bodies: ArrayBuffer | undefined, bigs: Array<Buffer | undefined> | undefined): void {
    for (let i = 0, m = 0; i < count; i++, m += 4) {
      const id = meta[m]
      const rc = meta[m + 1]
      const off = meta[m + 2]
      const len = meta[m + 3]
      const res = this.#res[id]
      this.#res[id] = undefined
      if (this.#streams[id] !== undefined) { this.#streams[id]?.bind(null); this.#streams[id] = undefined }
      this.#freeSlot(id)
      if (this.#abandoned.size > 0 && this.#abandoned.delete(id)) this.#late++
      let err: DlhostError | undefined
      let body: Buffer = EMPTY
      if (rc === 0 && off >= 0 && len > 0) body = bufferView(bodies as ArrayBuffer, off, len)
      else {
        const r = this.#answer(rc, off, len, i, bodies, bigs)
        if (r instanceof DlhostError) err = r
        else body = r
      }
      if (err === undefined) this.#completed++
      else this.#failed++
      if (err === undefined) res?.(body)
      else fail(res, err)
    }
  }

  /** One answer that is not a small body with rc 0: a big body, or the call's error. */
  #answer (rc: number, off: number, len: number, i: number, bodies: ArrayBuffer | undefined, bigs: Array<Buffer | undefined> | undefined): Buffer | DlhostError {
    if (len === ABORTED_LEN) return new DlhostError('ERR_ABORTED', 'the plugin never answered this call before its threads exited', { path: this.path })
    if (off === TOO_LARGE_OFFSET) return new DlhostError('ERR_RESPONSE_TOO_LARGE', `the plugin's answer is longer than a Buffer can be (${bufferConstants.MAX_LENGTH} bytes)`, { path: this.path, rc })
    const body = off === BIG_OFFSET ? (bigs?.[i] ?? EMPTY) : len === 0 ? EMPTY : bufferView(bodies as ArrayBuffer, off, len)
    return rc === 0 ? body : pluginError(this.path, rc, body)
  }

  /** Every queued item of batch h, answered: into its results, one pass. */
  #completeBatch (h: number, count: number, meta: Int32Array, bodies: ArrayBuffer | undefined, bigs: Array<Buffer | undefined> | undefined): void {
    const b = this.#batches[h] as Batch
    const results = b.results
    const slotBatch = this.#slotBatch
    const slotItem = this.#slotItem
    const late = this.#abandoned.size > 0
    let failed = 0
    // #freeSlot() for all of them: onto the free list's tail, counted once.
    const free = this.#free
    const cap = free.length
    let tail = this.#freeHead + this.#freeCount
    if (tail >= cap) tail -= cap
    for (let i = 0, m = 0; i < count; i++, m += 4) {
      const id = meta[m] as number
      const rc = meta[m + 1] as number
      const off = meta[m + 2] as number
      const len = meta[m + 3] as number
      slotBatch[id] = 0
      free[tail] = id
      if (++tail === cap) tail = 0
      if (late && this.#abandoned.delete(id)) this.#late++
      if (rc === 0 && off >= 0 && len > 0) results[slotItem[id] as number] = bufferView(bodies as ArrayBuffer, off, len)
      else {
        const r = this.#answer(rc, off, len, i, bodies, bigs)
        if (r instanceof DlhostError) failed++
        results[slotItem[id] as number] = r
      }
    }
    this.#freeCount += count
    this.#counters[0] -= count
    this.#completed += count - failed
    this.#failed += failed
    this.#settled(h, b, count)
  }

  /** n more items of batch h are in; the handle is free again after its last. */
  #settled (h: number, b: Batch, n: number): void {
    if (!b.settled(n)) return
    this.#batches[h] = undefined
    this.#freeBatches.push(h)
  }

  /** Item i of batch h is in (settled here, not by the plugin). */
  #put (h: number, i: number, v: Buffer | DlhostError): void {
    const b = this.#batches[h] as Batch
    b.results[i] = v
    this.#settled(h, b, 1)
  }

  /** The next free slot, counted in flight (FIFO; grows by a chunk when none is free, which may throw). */
  #takeSlot (): number {
    if (this.#freeCount === 0) this.#grow()
    const id = this.#free[this.#freeHead] as number
    if (++this.#freeHead === this.#free.length) this.#freeHead = 0
    this.#freeCount--
    this.#counters[0]++
    return id
  }

  /** A slot back on the free list (its native half was freed already). */
  #freeSlot (id: number): void {
    const cap = this.#free.length
    let tail = this.#freeHead + this.#freeCount
    if (tail >= cap) tail -= cap
    this.#free[tail] = id
    this.#freeCount++
    this.#counters[0]--
  }

  /** CHUNK more slots (only when none is free). */
  #grow (): void {
    const area = Buffer.from(this.#native.grow())
    const base = this.#areas.length * CHUNK
    this.#areas.push(area)
    const free = new Int32Array(base + CHUNK)
    for (let i = 0; i < this.#freeCount; i++) free[i] = this.#free[(this.#freeHead + i) % this.#free.length]
    for (let i = 0; i < CHUNK; i++) free[this.#freeCount + i] = base + i
    this.#free = free
    const slotBatch = new Int32Array(base + CHUNK)
    slotBatch.set(this.#slotBatch)
    this.#slotBatch = slotBatch
    const slotItem = new Int32Array(base + CHUNK)
    slotItem.set(this.#slotItem)
    this.#slotItem = slotItem
    this.#freeHead = 0
    this.#freeCount += CHUNK
  }

  /** Hands this turn's staged calls to the native queue in one batch. */
  #submitStaged (): void {
    const n = this.#stagedCount
    if (n === 0) return
    this.#stagedCount = 0
    let queued: number
    let err: unknown
    try {
      queued = this.#native.submit(this.#staged, n)
    } catch (e) {
      queued = 0
      err = fromNative(e, this.path)
    }
    if (queued === n) return
    // Refused (the runtime closed, or the native queue is full): settle them.
    if (err === undefined) {
      err = queued === C.SUBMIT_CLOSED
        ? new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path })
        : new DlhostError('ERR_QUEUE_FULL', 'the runtime queue is full', { path: this.path })
    }
    for (let i = Math.max(queued, 0); i < n; i++) {
      const id = this.#staged[2 * i]
      const res = this.#res[id]
      this.#res[id] = undefined
      if (this.#streams[id] !== undefined) { this.#streams[id]?.bind(null); this.#streams[id] = undefined }
      this.#freeSlot(id)
      fail(res, err) // never answered: not counted as failed
    }
  }

  /** A batch's staged items to the native queue, in one submit; refused ones are settled here. */
  #submitBatch (h: number, staged: Int32Array, n: number): void {
    let queued: number
    let err: unknown
    try {
      queued = this.#native.submit(staged, n, h)
    } catch (e) {
      queued = 0
      err = fromNative(e, this.path)
    }
    if (queued === n) return
    err ??= queued === C.SUBMIT_CLOSED
      ? new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path })
      : new DlhostError('ERR_QUEUE_FULL', 'the runtime queue is full', { path: this.path })
    for (let i = Math.max(queued, 0); i < n; i++) {
      const id = staged[2 * i] as number
      this.#slotBatch[id] = 0
      this.#freeSlot(id)
      this.#put(h, this.#slotItem[id] as number, asDlhostError(err, this.path))
    }
  }

  /** @internal */
  get ready (): Promise<void> { return this.#init }

  /**
   * The plugin's messages from now on, as an async iterator (Level 5); it
   * ends when the runtime is unloaded. Falling `highWaterMark` behind
   * pauses the flow (dlhost_emit refuses once the native queue is full).
   */
  messages (options?: MessagesOptions): AsyncIterableIterator<Buffer> {
    return this.#messages.iterate(options)
  }

  /** Sends one request; resolves with the plugin's response. */
  call (req: string | Uint8Array, options?: CallOptions): Promise<Buffer> {
    return callSites ? withCallSite(this.#call(req, options), this.call) : this.#call(req, options)
  }

  /**
   * @internal A state hand-over step (C.TASK_STATE_EXPORT / IMPORT), queued
   * behind the calls made before it: resolves with the exported bytes (or
   * an empty Buffer); a non-zero rc rejects with ERR_PLUGIN carrying it.
   */
  stateStep (kind: number, bytes: Uint8Array = EMPTY): Promise<Buffer> {
    return this.#call(bytes, undefined, kind)
  }

  /**
   * Sends many requests as one batch (docs/batch.md): they go to the plugin
   * as ordinary calls, in order, submitted together; one promise settles
   * with every result in order, each a Buffer or the DlhostError of that
   * item (one failing item does not fail the batch). A batch larger than
   * the free room under maxQueue is refused whole (ERR_QUEUE_FULL), never
   * sent in part. `signal` / `timeoutMs` give up on the whole batch (its
   * items' answers are then dropped and counted, as for call()).
   */
  callBatch (reqs: ReadonlyArray<string | Uint8Array>, options?: CallOptions): Promise<Array<Buffer | DlhostError>> {
    return callSites ? withCallSite(this.#callBatch(reqs, options), this.callBatch) : this.#callBatch(reqs, options)
  }

  #callBatch (reqs: ReadonlyArray<string | Uint8Array>, options?: CallOptions): Promise<Array<Buffer | DlhostError>> {
    let signal: AbortSignal | undefined
    let timeoutMs: number | undefined
    try {
      if (!Array.isArray(reqs)) throw typeError('callBatch(requests): requests must be an array of strings and/or Uint8Arrays')
      signal = callSignal(options)
      timeoutMs = callTimeout(options)
    } catch (err) { return Promise.reject(err) }
    if (this.#state !== 'running') return Promise.reject(new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path }))
    if (signal?.aborted === true) return Promise.reject(new DlhostError('ERR_ABORTED', 'the call was aborted', { path: this.path, cause: signal.reason }))
    const n = reqs.length
    if (n === 0) return Promise.resolve([])
    const counters = this.#counters
    if (counters[0] + n > this.#maxQueue) {
      return Promise.reject(new DlhostError('ERR_QUEUE_FULL', `a batch of ${n} does not fit under maxQueue (${this.#maxQueue - counters[0]} free): split it`, { path: this.path }))
    }
    this.#submitStaged() // calls made before the batch go first
    const b = new Batch(n)
    const h = this.#freeBatches.pop() ?? this.#batches.length
    this.#batches[h] = b
    // Only a batch that can be given up on needs its slots listed.
    const ids: number[] | undefined = signal === undefined && timeoutMs === undefined ? undefined : new Array(n)
    // Taken while in use: reading reqs[i] may run a getter that makes
    // another batch, which then stages into one of its own.
    let staged = this.#batchStaged
    this.#batchStaged = undefined
    if (staged === undefined || staged.length < 2 * n) staged = new Int32Array(Math.max(2 * n, 2 * FLUSH_AT))
    let k = 0
    for (let i = 0; i < n; i++) {
      // Each request is read once, checked, then copied into its slot.
      const req = reqs[i]
      let bytes: number
      try { bytes = requestLength(req) } catch (err) {
        // A bad request fails the whole batch before any of it is sent.
        for (let j = 0; j < k; j++) {
          const id = staged[2 * j] as number
          this.#slotBatch[id] = 0
          this.#freeSlot(id)
        }
        this.#batches[h] = undefined
        this.#freeBatches.push(h)
        this.#batchStaged = staged
        return Promise.reject(err)
      }
      let id: number
      try { id = this.#takeSlot() } catch (err) { this.#put(h, i, asDlhostError(fromNative(err, this.path), this.path)); continue }
      let len: number
      try {
        len = this.#write(id, req as string | Uint8Array, bytes)
      } catch (err) {
        this.#freeSlot(id)
        this.#put(h, i, asDlhostError(fromNative(err, this.path), this.path))
        continue
      }
      this.#slotBatch[id] = h
      this.#slotItem[id] = i
      if (ids !== undefined) ids[i] = id
      staged[2 * k] = id
      staged[2 * k + 1] = len
      k++
    }
    // One submit: the whole batch is here, no reason to wait for the end of the turn.
    if (k > 0) this.#submitBatch(h, staged, k)
    this.#batchStaged = staged
    if (ids === undefined) return b.promise
    // Given up on, the whole batch: each item still in flight is cancelled.
    // (While b waits for an item, h is b's: a slot marked h is b's item.)
    return this.#guard(b.promise, ids, id => id !== undefined && b.pending > 0 && this.#slotBatch[id] === h, signal, timeoutMs)
  }

  /**
   * The one copy of a request into its slot, now (the caller may reuse its
   * buffer as soon as call() returns): small ones into the slot's inline
   * bytes (NUL after them), others to setBig(). The staged length, -1 for a
   * big one. Throws what setBig() throws.
   */
  #write (id: number, req: string | Uint8Array, n: number): number {
    let len = -1
    const area = this.#areas[id >>> CHUNK_BITS] as Buffer
    const off = (id & (CHUNK - 1)) * STRIDE
    if (n < 0) {
      if ((req as string).length <= INLINE / 3) len = area.write(req as string, off, 'utf8')
    } else if (n <= INLINE) {
      area.set(req as Uint8Array, off) // copies the intrinsic length, n
      len = n
    }
    if (len >= 0) area[off + len] = 0
    else this.#native.setBig(id, req)
    return len
  }

  /**
   * Sends one request whose answer comes in chunks (dlhost_task_send), as
   * an async iterator; the answer's body, if any, is the last chunk. A
   * host-driven plugin's answer is a stream of one chunk.
   */
  stream (req: string | Uint8Array, options?: StreamOptions): AsyncIterableIterator<Buffer> {
    return openStream(req, options, (r, o, reader) => this.#call(r, o, 0, reader))
  }

  #chunks (count: number, meta: Int32Array, bodies: ArrayBuffer): void {
    deliverChunks(this.#streams, count, meta, bodies)
  }

  #call (req: string | Uint8Array, options?: CallOptions, kind = 0, stream?: StreamReader): Promise<Buffer> {
    // Everything that can throw runs before a slot is taken.
    let n: number
    let signal: AbortSignal | undefined
    let timeoutMs: number | undefined
    try {
      n = requestLength(req)
      signal = callSignal(options)
      timeoutMs = callTimeout(options)
    } catch (err) { return Promise.reject(err) }
    if (this.#state !== 'running') {
      return Promise.reject(new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path }))
    }
    if (signal?.aborted === true) return Promise.reject(new DlhostError('ERR_ABORTED', 'the call was aborted', { path: this.path, cause: signal.reason }))
    const counters = this.#counters
    if (counters[0] >= this.#maxQueue) {
      return Promise.reject(new DlhostError('ERR_QUEUE_FULL', 'the runtime queue is full', { path: this.path }))
    }
    let id: number
    try { id = this.#takeSlot() } catch (err) { return Promise.reject(fromNative(err, this.path)) }
    let len: number
    try {
      len = this.#write(id, req, n)
      if (kind !== 0) this.#native.setKind(id, kind)
      if (stream !== undefined) {
        this.#native.setStream(id, stream.hwm)
        this.#streams[id] = stream
        const native = this.#native
        stream.bind({ read: n => native.streamRead(id, n), cancel: () => { this.#submitStaged(); native.cancel(id) } })
      }
    } catch (e) {
      this.#streams[id] = undefined
      this.#freeSlot(id)
      return Promise.reject(fromNative(e, this.path))
    }
    const p = pending()
    this.#res[id] = takeResolve()
    const k = this.#stagedCount++
    this.#staged[2 * k] = id
    this.#staged[2 * k + 1] = len
    if (k === 0) queueMicrotask(this.#flush)
    else if (k + 1 === FLUSH_AT) this.#submitStaged()
    if (signal === undefined && timeoutMs === undefined) return p
    return this.#guard(p, [id], x => this.#res[x] !== undefined, signal, timeoutMs)
  }

  /**
   * The caller may give up on a call (its signal, its timeout) before the
   * plugin answers; the slot stays the plugin's until it does, and that
   * answer is then dropped and counted.
   */
  #guard<T> (p: Promise<T>, ids: number[], pending: (id: number) => boolean, signal: AbortSignal | undefined, timeoutMs: number | undefined): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      let stop: (() => void) | undefined
      const done = (): void => {
        if (timer !== undefined) clearTimeout(timer)
        stop?.()
      }
      const giveUp = (err: DlhostError): void => {
        done()
        // Staged calls reach the plugin first, then learn they were given up on.
        this.#submitStaged()
        for (const id of ids) {
          if (!pending(id)) continue
          this.#abandoned.add(id)
          this.#native.cancel(id)
        }
        reject(err)
      }
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => { this.#timeouts++; giveUp(new DlhostError('ERR_TIMEOUT', `no answer within ${timeoutMs} ms`, { path: this.path })) }, timeoutMs)
      }
      if (signal !== undefined) {
        stop = onAbort(signal, () => giveUp(new DlhostError('ERR_ABORTED', 'the call was aborted', { path: this.path, cause: signal.reason })))
      }
      p.then(v => { done(); resolve(v) }, e => { done(); reject(e) })
    })
  }

  /**
   * Runs the handler on this thread (host-driven plugins only), bypassing the
   * queue. Small answers are slices of a shared 64 KiB slab (as Node's own
   * Buffer pool does): keeping one keeps its slab alive.
   */
  callSync (req: string | Uint8Array): Buffer {
    // The native side checks a non-string as intrinsically as requestLength() does.
    const bytes = typeof req !== 'string'
    if (this.abi !== 'host') throw new DlhostError('ERR_NOT_SYNC', 'callSync needs a host-driven plugin (dlhost_handle)', { path: this.path })
    if (this.#state !== 'running') throw new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path })
    try {
      if (bytes) (this.#syncBytes ??= this.#native.syncBytes())(req as Uint8Array)
      else this.#native.callSync(req)
    } catch (err) { throw fromNative(err, this.path) }
    const m = this.#syncMeta ??= this.#native.syncMeta()
    if (m[0] !== this.#slabGen) {
      this.#slab = this.#native.syncSlab()
      this.#slabGen = m[0]
    }
    const len = m[2]
    if (m[1] === C.SYNC_TOO_LARGE_OFFSET) {
      throw new DlhostError('ERR_RESPONSE_TOO_LARGE', `the plugin's answer is longer than a Buffer can be (${bufferConstants.MAX_LENGTH} bytes)`, { path: this.path, rc: m[3] })
    }
    const body = m[1] === SYNC_BIG_OFFSET ? this.#native.takeBig() : len === 0 ? EMPTY : bufferView(this.#slab as ArrayBuffer, m[1], len)
    if (m[3] !== 0) throw pluginError(this.path, m[3], body)
    return body
  }

  /**
   * Graceful unload (idempotent): every call queued before it is answered,
   * the poll threads exit, then the runtime's library reference goes.
   */
  unload (): Promise<void> {
    if (this.#state === 'running' || this.#state === 'starting') {
      this.#submitStaged() // calls made before unload are answered
      this.#state = 'unloading'
      this.#native.unload()
    }
    if (live.get(this.key)?.rt === this) {
      live.delete(this.key)
      const gone = this.#unloaded
      dying.set(this.key, gone)
      void gone.then(() => { if (dying.get(this.key) === gone) dying.delete(this.key) })
    }
    return this.#unloaded
  }

  get state (): 'starting' | 'running' | 'unloading' | 'unloaded' { return this.#state }

  get stats (): RuntimeStats {
    const s: NativeStats = this.#native.stats()
    return { queued: s.queued + this.#stagedCount, inFlight: this.#counters[0], completed: this.#completed, failed: this.#failed, misuse: s.misuse, late: this.#late, messages: this.#messageCount, messagesRefused: s.messagesRefused, timeouts: this.#timeouts, latency: latencyBetween(this.#hist, null), callGapNs: s.callGapNs, parksAtOnce: s.parksAtOnce, jsParksAtOnce: s.jsParksAtOnce, version: this.#version }
  }

  /** @internal The live latency histogram (csrc/histogram.h), or null with metrics: false. */
  get histogram (): Float64Array | null {
    return this.#hist
  }

  /** The library row this runtime runs in. */
  get library (): LibraryRow {
    const row = binding.libraries().find(r => r.serial === this.#serial)
    if (row !== undefined) return rowOf(row)
    return { path: this.path, version: this.#version, refs: 0, pinned: false, runtimes: 0, mapped: false, stuck: null }
  }

  /** After unload: whether the library was dlclosed and whether it is still mapped. */
  get unloadInfo (): NativeUnloadInfo | null { return this.#unloadInfo }

  /**
   * @internal tuning for benchmarks: JS-side and poller spin budgets in ns.
   * Setting a side's budget turns its adaptive rule off: it spins on every
   * wait. A negative budget restores the default (50 us, adaptive).
   */
  setSpin (jsSpinNs?: number, pollerSpinNs?: number): void { this.#native.setSpin(jsSpinNs, pollerSpinNs) }
}

/** The ABI asked for (the native side resolves its entry and says if it is missing), else the detected one. */
function pickAbi (lib: Library, entry: Abi | undefined): Abi {
  if (entry !== undefined) {
    if (!isAbi(entry)) throw typeError(`options.entry must be one of ${Object.keys(ENTRY).join(', ')}`)
    return entry
  }
  const { abi } = abiOf(s => lib.has(s))
  if (abi === null) throw noEntryError(lib.path, lib.elf.exports)
  return abi
}

// A reloadable plugin loads every version with the same cfg Buffer: its
// private copy (frozenCfg) is hashed once. Any other cfg is hashed per load,
// since a caller's Uint8Array may change between loads.
const frozenCfgHashes = new WeakMap<Buffer, string>()
function cfgHash (cfg: Buffer): string {
  return frozenCfgHashes.get(cfg) ?? createHash('sha256').update(cfg).digest('hex')
}
/** @internal A private, never-written copy of `cfg`, its hash computed once. */
export function frozenCfg (cfg: Cfg): Buffer {
  const b = Buffer.from(cfgBuffer(cfg))
  frozenCfgHashes.set(b, createHash('sha256').update(b).digest('hex'))
  return b
}

/** An isolated runtime: its own child process per load (no sharing by identity and cfg). */
async function loadIsolated (path: string, cfg: Buffer, options: LoadOptions, maxQueue: number, unloadTimeoutMs: number): Promise<IsolatedRuntime> {
  let elf
  try {
    elf = parseElf(fs.readFileSync(path), path)
  } catch (err) { throw err instanceof DlhostError ? err : errnoError(err, path) }
  const abi = options.entry ?? abiOf(s => elf.exports.includes(s)).abi
  if (abi === null) throw noEntryError(path, elf.exports)
  const rt = new IsolatedRuntime(path, { abi, cfg, global: options.global ?? false, maxQueue, unloadTimeoutMs: unloadTimeoutMs === Infinity ? -1 : unloadTimeoutMs, limits: options.limits, trust: options.trust, maxCrashes: options.maxCrashes, crashWindowMs: options.crashWindowMs, metrics: options.metrics })
  await rt.start()
  return rt
}

// Runtimes being unloaded, by key: a load() of the same key waits for them.
const dying = new Map<string, Promise<void>>()

export async function load (path: string, cfg: Cfg | undefined, options: LoadOptions & { isolate: 'process' }): Promise<IsolatedRuntime>
export async function load (path: string, cfg?: Cfg, options?: LoadOptions): Promise<Runtime>
/**
 * Loads a runtime, or returns the live one for the same library identity and
 * cfg (then nothing else happens: no option is applied, as lua-resty-ffi
 * returns its cached runtime). Never resolves with a runtime being unloaded:
 * a load() of its key waits for that unload, then loads afresh.
 */
export async function load (path: string, cfg?: Cfg, options: LoadOptions = {}): Promise<Runtime | IsolatedRuntime> {
  checkPath(path)
  checkKeys(options, LOAD_KEYS, 'load() options')
  checkLimits(options.limits)
  checkTrustOption(options.trust)
  const maxQueue = options.maxQueue ?? C.DEFAULT_MAX_QUEUE
  if (!Number.isInteger(maxQueue)) throw typeError('options.maxQueue must be an integer')
  if (maxQueue < 1 || maxQueue > C.MAX_MAX_QUEUE) throw rangeError(`options.maxQueue must be between 1 and ${C.MAX_MAX_QUEUE}`)
  const unloadTimeoutMs = options.unloadTimeoutMs ?? C.DEFAULT_UNLOAD_TIMEOUT_MS
  if (typeof unloadTimeoutMs !== 'number' || Number.isNaN(unloadTimeoutMs) || unloadTimeoutMs < 0) {
    throw typeError('options.unloadTimeoutMs must be a number >= 0 (Infinity: no limit)')
  }
  if (options.entry !== undefined && !isAbi(options.entry)) throw typeError(`options.entry must be one of ${Object.keys(ENTRY).join(', ')}`)
  const cfgBuf = cfgBuffer(cfg)
  if (options.isolate === 'process') return await loadIsolated(path, cfgBuf, options, maxQueue, unloadTimeoutMs)
  if (options.isolate !== undefined && options.isolate !== false) throw typeError("options.isolate must be 'process' or false")
  const hash = cfgHash(cfgBuf)
  // A copy the caller read and checked (the reload layer) is opened first:
  // its identity comes from that open, not from a second stat.
  let id: NativeIdentity | null = null
  if (options.known === undefined) {
    try { id = binding.identify(path) } catch (err) { throw fromNative(err, path) }
  }
  for (;;) {
    if (id !== null) {
      const key = `${id.realPath}\0${id.key}\0${hash}`
      const existing = live.get(key)
      if (existing !== undefined) {
        const rt = await existing.ready
        if (rt.state === 'running') return rt
        continue // unloaded while it started: look again
      }
      const leaving = dying.get(key)
      if (leaving !== undefined) { await leaving; continue }
    }
    const lib = open(path, { pin: options.pin ?? true, global: options.global ?? false, known: options.known, trust: options.trust })
    try {
      const key = `${lib.realPath}\0${lib.native.key}\0${hash}`
      const seen = id
      id = lib.native
      if (seen === null ? (live.has(key) || dying.has(key)) : key !== `${seen.realPath}\0${seen.key}\0${hash}`) {
        // Opened something not looked up yet (the file changed, or no
        // look-up was made): look again with what was opened.
        continue
      }
      const abi = pickAbi(lib, options.entry)
      // Threads that never exit (a Go runtime) are not waited for: stuck at once.
      const timeout = threadsNeverExit(lib.elf) !== null ? 0 : unloadTimeoutMs === Infinity ? -1 : unloadTimeoutMs
      const rt = new Runtime(lib, abi, cfgBuf, key, maxQueue, timeout, options.metrics ?? true)
      const ready = rt.ready.then(() => rt)
      live.set(key, { rt, ready })
      ready.catch(() => { if (live.get(key)?.rt === rt) live.delete(key) })
      return await ready
    } finally {
      lib.release() // the runtime holds its own reference while it runs
    }
  }
}
