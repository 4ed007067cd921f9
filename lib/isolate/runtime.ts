/**
 * Level 4: a runtime whose library lives in a child process (dlhost-host),
 * fed through a shared-memory channel. The same calls as an in-process
 * Runtime; what the child does cannot take the host down: a crash rejects
 * that child's calls with ERR_PLUGIN_CRASHED, the child is started again
 * with exponential back-off while new calls wait in order (bounded), and
 * after `maxCrashes` crashes within `crashWindowMs` calls reject with
 * ERR_CRASH_LOOP until reload(). JS thread only.
 */
import { createHash } from 'crypto'
import { ChildProcess } from 'child_process'
import fs from 'fs'
import { binding, C, NativeUnloadInfo } from '../binding'
import { parseElf } from '../elf'
import { asDlhostError, callSites, DlhostError, errnoError, pluginError, typeError, withCallSite } from '../errors'
import { emitSafely, onAbort, TypedEmitter } from '../events'
import { MessageHub, MessagesOptions } from '../messages'
import { deliverChunks, openStream, StreamOptions, StreamReader } from '../stream'
import { latencyBetween, LatencySummary, SERVICE } from '../metrics'
import { requestLength } from '../request'
import { callSignal, callTimeout } from '../runtime'
import { bufferView } from '../view'
import { fail, pending, Resolve, takeResolve } from '../settle'
import type { CallOptions } from '../runtime'
import { Abi, checkHostCompatible } from '../rules'
import { checkTrusted, Trust } from '../trust'
import type { LibraryVersion } from '../library'
import { howEnded, Limits, startHost } from './host'

/** The native end of the channel (csrc/channel_wrap.cc). */
interface NativeChannel {
  fds (): [number, number]
  spawned (): void
  sendCfg (cfg: Buffer): void
  send (id: number, req: string | Uint8Array, kind?: number, hwm?: number): boolean
  flush (): void
  cancel (id: number): void
  messageFlow (on: boolean): void
  messagesRefused (): number
  streamRead (id: number, n: number): void
  histogram (on: boolean): Float64Array | null
  unload (): void
  counters (): Int32Array
  limit (): 'memoryMb' | 'cpuSeconds' | 'openFiles' | null
  close (): void
}
type ChannelClass = new (ringBytes: number, onComplete: (count: number, meta: Int32Array, bodies: ArrayBuffer | undefined, bigs: Array<Buffer | undefined> | undefined) => void,
  onEvent: (kind: string, info: number | NativeUnloadInfo, failure?: string, message?: string) => void,
  onMessages: (count: number, meta: Int32Array, bodies: ArrayBuffer) => void,
  onChunks: (count: number, meta: Int32Array, bodies: ArrayBuffer) => void) => NativeChannel
const Channel = (binding as unknown as { Channel: ChannelClass }).Channel

const ABI_CODES: Record<Abi, number> = { host: C.ABI_HOST, native: C.ABI_NATIVE, 'lua-resty-ffi': C.ABI_LUA }
const EMPTY = Buffer.alloc(0)
const RING_BYTES = 16 * 1024 * 1024
const BACKOFF_MS = 10
const BACKOFF_MAX_MS = 2000
const STABLE_MS = 10000

export interface IsolateOptions {
  abi: Abi
  cfg: Buffer
  global: boolean
  maxQueue: number
  unloadTimeoutMs: number
  limits?: Limits
  /** Crashes within crashWindowMs that stop the restarts (default 5 in 10 s). */
  maxCrashes?: number
  crashWindowMs?: number
  trust?: Trust
  /** Count call latencies (default true; see LoadOptions.metrics). */
  metrics?: boolean
}

/** A call waiting for a child that serves: its slot and a copy of its bytes. */
interface Held {
  id: number
  req: string | Uint8Array
  /** A state step (C.TASK_STATE_*), or 0 for a call. */
  kind: number
  /** A stream's high-water mark, or 0. */
  hwm: number
}

const seqs = new Map<string, string[]>()

/** into += h, two histograms each (metrics.ts): counts and sums add up, a max stays a max. */
function addHistogram (into: Float64Array, h: Float64Array): void {
  for (let i = 0; i < into.length; i++) into[i] = (into[i] as number) + (h[i] as number)
  into[2] = Math.max(into[2] as number - (h[2] as number), h[2] as number)
  into[SERVICE + 2] = Math.max(into[SERVICE + 2] as number - (h[SERVICE + 2] as number), h[SERVICE + 2] as number)
}

/** The content facts of the file, read once: what this runtime reports as its version. */
function versionOf (path: string, trust: Trust | undefined): { version: LibraryVersion, realPath: string } {
  checkTrusted(path, trust)
  let bytes: Buffer
  let st: fs.BigIntStats
  let realPath: string
  try {
    realPath = fs.realpathSync.native(path)
    bytes = fs.readFileSync(realPath)
    st = fs.statSync(realPath, { bigint: true })
  } catch (err) { throw errnoError(err, path) }
  checkHostCompatible(parseElf(bytes, path), path)
  const sha256 = createHash('sha256').update(bytes).digest('hex')
  let list = seqs.get(realPath)
  if (list === undefined) seqs.set(realPath, list = [])
  if (!list.includes(sha256)) list.push(sha256)
  return { realPath, version: { sha256, seq: list.indexOf(sha256) + 1, dev: Number(st.dev), ino: Number(st.ino), size: Number(st.size), mtimeMs: Number(st.mtimeNs) / 1e6 } }
}

/**
 * IsolatedRuntime's events: 'crash' each time the child dies (the runtime
 * restarts it unless it crash-loops), 'error' (ERR_CRASH_LOOP) when it stops
 * restarting.
 */
export interface IsolatedRuntimeEvents {
  crash: [DlhostError]
  error: [DlhostError]
  /** A dlhost_emit of the plugin, in the child (Level 5). */
  message: [Buffer]
}

export class IsolatedRuntime extends TypedEmitter<IsolatedRuntimeEvents> {
  readonly abi: Abi
  readonly path: string
  readonly isolate = 'process' as const
  #o: IsolateOptions
  #version: LibraryVersion
  #child: ChildProcess | null = null
  #channel: NativeChannel | null = null
  #counters: Int32Array = new Int32Array(1)
  // Calls by slot (the id the child echoes back): the promise's resolve
  // function while the call is sent or held. A slot is free again once the
  // child answered, or once the child is gone.
  #res: Array<Resolve | undefined> = []
  #free: number[] = []
  #held: Held[] = []
  #state: 'starting' | 'running' | 'restarting' | 'crash-loop' | 'unloading' | 'unloaded' = 'starting'
  #crashes: number[] = []
  #backoff = BACKOFF_MS
  #startedAt = 0
  #completed = 0
  #failed = 0
  #late = 0
  #restarts = 0
  #abandoned = new Set<number>()
  #unloadInfo: NativeUnloadInfo | null = null
  #unloaded: Promise<void>
  #resolveUnloaded!: () => void
  #ready: ((err?: unknown) => void) | null = null
  #stderr = ''

  #messages: MessageHub
  #messageCount = 0
  // Refusals counted by children that are gone.
  #refusedBefore = 0
  // Someone listens for messages: the child keeps the loop alive.
  #listening = false

  /** @internal use load(path, cfg, { isolate: 'process' }) */
  constructor (path: string, o: IsolateOptions) {
    super()
    this.#messages = new MessageHub(this as unknown as TypedEmitter<{ message: [Buffer] }>)
    this.path = path
    this.abi = o.abi
    this.#o = o
    this.#version = versionOf(path, o.trust).version
    this.#unloaded = new Promise(resolve => { this.#resolveUnloaded = resolve })
    void this.#unloaded.then(() => this.#messages.end())
  }

  /** @internal Starts the first child; resolves once its init succeeded. */
  start (): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#ready = (err?: unknown) => { this.#ready = null; if (err === undefined) resolve(); else reject(err) }
      this.#spawn()
    })
  }

  #spawn (): void {
    const channel = new Channel(RING_BYTES,
      (count, meta, bodies, bigs) => this.#complete(count, meta, bodies, bigs),
      (kind, info, failure, message) => this.#event(channel, kind, info, failure, message),
      (count, meta, bodies) => { this.#messageCount += count; this.#messages.deliver(count, meta, bodies) },
      (count, meta, bodies) => this.#chunks(count, meta, bodies))
    this.#channel = channel
    this.#channelHist = this.#o.metrics === false ? null : channel.histogram(true)
    this.#messages.attach({
      flow: on => { if (this.#channel === channel) channel.messageFlow(on) },
      ref: on => { this.#listening = on; this.#refChild() }
    })
    this.#counters = channel.counters()
    this.#counters[0] = this.#inFlight
    let child: ChildProcess
    try {
      child = startHost({ lib: this.path, abi: ABI_CODES[this.abi], global: this.#o.global, maxQueue: this.#o.maxQueue, unloadTimeoutMs: this.#o.unloadTimeoutMs, limits: this.#o.limits, fds: channel.fds() })
    } catch (err) {
      channel.close()
      this.#ready?.(err)
      return
    }
    channel.spawned()
    this.#child = child
    this.#startedAt = Date.now()
    this.#stderr = ''
    child.stderr?.on('data', (d: Buffer) => { if (this.#stderr.length < 4096) this.#stderr += d.toString() })
    child.once('exit', (code, signal) => this.#exited(child, channel, code, signal))
    child.once('error', err => { this.#ready?.(new DlhostError('ERR_RESOURCE', `cannot start the isolation host: ${err.message}`, { path: this.path })) })
    // The child keeps the loop alive while it starts; once it serves, only
    // calls in flight do (the channel's doorbell is ref'd then).
    ;(child.stdin as unknown as { unref?: () => void } | null)?.unref?.()
    ;(child.stderr as unknown as { unref?: () => void } | null)?.unref?.()
    channel.sendCfg(this.#o.cfg)
  }

  #event (channel: NativeChannel, kind: string, info: number | NativeUnloadInfo, failure?: string, message?: string): void {
    if (channel !== this.#channel) return
    if (kind === 'init') {
      const rc = info as number
      if (rc === 0) {
        this.#state = 'running'
        this.#refChild()
        const held = this.#held
        this.#held = []
        for (const h of held) this.#send(h.id, h.req, h.kind, h.hwm)
        this.#ready?.()
        return
      }
      const err = failure === 'symbol' || failure === 'load'
        ? new DlhostError(failure === 'symbol' ? 'ERR_SYMBOL_MISSING' : 'ERR_DLOPEN', `${this.path}: ${message ?? 'cannot load'}`, { path: this.path })
        : failure === 'open-null'
          ? new DlhostError('ERR_INIT_FAILED', `dlhost_open returned NULL: ${this.path}`, { path: this.path })
          : new DlhostError('ERR_INIT_FAILED', `plugin init failed with rc ${rc}: ${this.path}`, { path: this.path, rc })
      this.#initFailed = err
      return
    }
    this.#unloadInfo = info as NativeUnloadInfo
  }

  #initFailed: DlhostError | null = null
  // The child killed because a call timed out: not a crash of the plugin's.
  #recycled: ChildProcess | null = null

  /** The child keeps the loop alive while it starts, and while someone listens for messages. */
  #refChild (): void {
    if (this.#child === null || this.#state === 'unloading') return
    if (this.#listening || this.#state !== 'running') this.#child.ref()
    else this.#child.unref()
  }

  #exited (child: ChildProcess, channel: NativeChannel, code: number | null, signal: NodeJS.Signals | null): void {
    const limit = channel.limit()
    this.#refusedBefore += channel.messagesRefused()
    if (this.#channelHist !== null) channel.histogram(true) // its last service times, before the channel closes
    channel.close() // what the child wrote before it died is settled first
    this.#keepHistogram()
    if (this.#child === child) this.#child = null
    if (this.#channel === channel) this.#channel = null
    if (this.#state === 'unloading' || this.#state === 'unloaded') {
      this.#abortAll(new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path }))
      this.#state = 'unloaded'
      this.#unloadInfo ??= { dlclosed: false, mapped: false, threadsStuck: false, misuse: 0, aborted: 0 }
      this.#resolveUnloaded()
      return
    }
    if (this.#initFailed !== null && this.#ready !== null) {
      // The first child could not load or init: load() rejects.
      const err = this.#initFailed
      this.#state = 'unloaded'
      this.#resolveUnloaded()
      this.#ready(err)
      return
    }
    if (this.#recycled === child) {
      this.#recycled = null
      this.#abortAll(new DlhostError('ERR_PLUGIN_CRASHED', `the isolated plugin's child was recycled: a call timed out: ${this.path}`, { path: this.path, reason: 'timeout' }))
      this.#restarts++
      this.#spawn()
      return
    }
    const how = limit !== null ? `${howEnded(code, signal)}, past its ${limit} limit` : howEnded(code, signal)
    const err = new DlhostError('ERR_PLUGIN_CRASHED', `the isolated plugin crashed (${how}): ${this.path}`,
      { path: this.path, reason: limit ?? (signal ?? `exit ${String(code)}`), loaderMessage: this.#stderr.trim() || undefined })
    Object.assign(err, { signal, exitCode: code, limit })
    this.#abortAll(err)
    if (this.#ready !== null) { this.#state = 'unloaded'; this.#resolveUnloaded(); this.#ready(err); return }
    const now = Date.now()
    if (now - this.#startedAt >= STABLE_MS) this.#backoff = BACKOFF_MS
    this.#crashes.push(now)
    const window = this.#o.crashWindowMs ?? 10000
    this.#crashes = this.#crashes.filter(t => t > now - window)
    emitSafely(this, 'crash', err)
    if (this.#crashes.length >= (this.#o.maxCrashes ?? 5)) {
      this.#state = 'crash-loop'
      const loop = new DlhostError('ERR_CRASH_LOOP', `the isolated plugin crashed ${this.#crashes.length} times within ${window} ms; not restarted until reload(): ${this.path}`, { path: this.path, cause: err })
      this.#failHeld(loop)
      if (this.listenerCount('error') > 0) emitSafely(this, 'error', loop)
      return
    }
    this.#state = 'restarting'
    const delay = this.#backoff
    this.#backoff = Math.min(this.#backoff * 2, BACKOFF_MAX_MS)
    // Ref'd: calls waiting for the next child keep the process alive (the
    // delay is at most a few seconds).
    setTimeout(() => {
      if (this.#state !== 'restarting') return
      this.#restarts++
      this.#spawn()
    }, delay)
  }

  /** Calls sent or held: what counters[0] says to the native side too. */
  #inFlight = 0

  #take (): number {
    this.#inFlight++
    this.#counters[0] = this.#inFlight
    return this.#free.length > 0 ? this.#free.pop() as number : this.#res.length
  }

  /** The slot's resolve function; the slot is free again. */
  #release (id: number): Resolve | undefined {
    const res = this.#res[id]
    this.#res[id] = undefined
    if (this.#streams[id] !== undefined) { this.#streams[id]?.bind(null); this.#streams[id] = undefined }
    this.#free.push(id)
    this.#inFlight--
    this.#counters[0] = this.#inFlight
    return res
  }

  /** Rejects every call sent to the child that is gone (held calls wait for the next one). */
  #abortAll (err: unknown): void {
    const held = new Set(this.#held.map(h => h.id))
    for (let id = 0; id < this.#res.length; id++) {
      if (this.#res[id] === undefined || held.has(id)) continue
      this.#failed++
      fail(this.#release(id), err)
    }
    this.#abandoned.clear()
  }

  #failHeld (err: unknown): void {
    const held = this.#held
    this.#held = []
    for (const h of held) fail(this.#release(h.id), err)
  }

  #complete (count: number, meta: Int32Array, bodies: ArrayBuffer | undefined, bigs: Array<Buffer | undefined> | undefined): void {
    for (let i = 0, m = 0; i < count; i++, m += 4) {
      const id = meta[m] as number
      const rc = meta[m + 1] as number
      const off = meta[m + 2] as number
      const len = meta[m + 3] as number
      if (this.#res[id] === undefined) continue
      const res = this.#release(id)
      if (this.#abandoned.size > 0 && this.#abandoned.delete(id)) { this.#late++; continue }
      if (len === C.ABORTED_LEN) {
        this.#failed++
        fail(res, new DlhostError('ERR_ABORTED', 'the plugin never answered this call before its threads exited', { path: this.path }))
        continue
      }
      const body = off === C.BIG_OFFSET ? (bigs?.[i] ?? EMPTY) : len === 0 ? EMPTY : bufferView(bodies as ArrayBuffer, off, len)
      if (rc === 0) { this.#completed++; res?.(body) } else {
        this.#failed++
        fail(res, pluginError(this.path, rc, body))
      }
    }
  }

  // Requests written in one turn are published together (one wake-up of the
  // child); a long burst every FLUSH_AT.
  #unflushed = 0
  #flush = (): void => {
    this.#unflushed = 0
    this.#channel?.flush()
  }

  #send (id: number, req: string | Uint8Array, kind: number, hwm: number): void {
    const ch = this.#channel
    if (ch !== null && this.#unflushed++ === 0) queueMicrotask(this.#flush)
    else if (this.#unflushed >= 64) this.#flush()
    if (ch === null || !(kind === 0 && hwm === 0 ? ch.send(id, req) : ch.send(id, req, kind, hwm))) {
      fail(this.#release(id), new DlhostError('ERR_QUEUE_FULL', 'the channel to the isolated plugin is full', { path: this.path }))
    }
  }

  /**
   * Many requests in one promise (see Runtime.callBatch): each item is an
   * ordinary call over the channel, published together; its result is a
   * Buffer or that item's DlhostError. Refused whole (ERR_QUEUE_FULL) when
   * it does not fit under maxQueue.
   */
  async callBatch (reqs: ReadonlyArray<string | Uint8Array>, options?: CallOptions): Promise<Array<Buffer | DlhostError>> {
    if (!Array.isArray(reqs)) throw typeError('callBatch(requests): requests must be an array of strings and/or Uint8Arrays')
    for (const r of reqs) requestLength(r)
    if (this.#state === 'crash-loop') throw new DlhostError('ERR_CRASH_LOOP', `the isolated plugin is in a crash loop: ${this.path}`, { path: this.path })
    if (this.#state === 'unloading' || this.#state === 'unloaded') throw new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path })
    if (this.#inFlight + reqs.length > this.#o.maxQueue) throw new DlhostError('ERR_QUEUE_FULL', `a batch of ${reqs.length} does not fit under maxQueue (${this.#o.maxQueue - this.#inFlight} free): split it`, { path: this.path })
    const settle = (p: Promise<Buffer>): Promise<Buffer | DlhostError> => p.catch((err: unknown) => asDlhostError(err, this.path))
    return await Promise.all(reqs.map(r => settle(this.#call(r, options))))
  }

  /** Sends one request to the child; resolves with the plugin's response. */
  call (req: string | Uint8Array, options?: CallOptions): Promise<Buffer> {
    return callSites ? withCallSite(this.#call(req, options), this.call) : this.#call(req, options)
  }

  /**
   * @internal A state hand-over step (C.TASK_STATE_EXPORT / IMPORT), in
   * order behind the calls made before it, run in the child.
   */
  stateStep (kind: number, bytes: Uint8Array = EMPTY): Promise<Buffer> {
    return this.#call(bytes, undefined, kind)
  }

  // Streams by call id, while the id is theirs.
  #streams: Array<StreamReader | undefined> = []

  /** Sends one request whose answer comes in chunks, as an async iterator (see Runtime.stream). */
  stream (req: string | Uint8Array, options?: StreamOptions): AsyncIterableIterator<Buffer> {
    return openStream(req, options, (r, o, reader) => this.#call(r, o, 0, reader))
  }

  #chunks (count: number, meta: Int32Array, bodies: ArrayBuffer): void {
    deliverChunks(this.#streams, count, meta, bodies)
  }

  #call (req: string | Uint8Array, options?: CallOptions, kind = 0, stream?: StreamReader): Promise<Buffer> {
    let signal: AbortSignal | undefined
    let timeoutMs: number | undefined
    try {
      requestLength(req)
      signal = callSignal(options)
      timeoutMs = callTimeout(options)
    } catch (err) { return Promise.reject(err) }
    if (this.#state === 'crash-loop') return Promise.reject(new DlhostError('ERR_CRASH_LOOP', `the isolated plugin is in a crash loop: ${this.path}`, { path: this.path }))
    if (this.#state === 'unloading' || this.#state === 'unloaded') return Promise.reject(new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path }))
    if (signal?.aborted === true) return Promise.reject(new DlhostError('ERR_ABORTED', 'the call was aborted', { path: this.path, cause: signal.reason }))
    if (this.#inFlight >= this.#o.maxQueue) return Promise.reject(new DlhostError('ERR_QUEUE_FULL', 'the runtime queue is full', { path: this.path }))
    const id = this.#take()
    const p = pending()
    this.#res[id] = takeResolve()
    const hwm = stream?.hwm ?? 0
    if (stream !== undefined) {
      this.#streams[id] = stream
      stream.bind({
        read: n => { this.#channel?.streamRead(id, n) },
        cancel: () => { this.#flush(); this.#channel?.cancel(id) }
      })
    }
    // A serving child gets the bytes now (copied into the channel); a
    // starting one gets them later, so a copy is kept meanwhile.
    if (this.#state === 'running') this.#send(id, req, kind, hwm)
    else this.#held.push({ id, req: typeof req === 'string' ? req : Buffer.from(req), kind, hwm })
    if (signal === undefined && timeoutMs === undefined) return p
    return this.#guard(p, id, signal, timeoutMs)
  }

  /**
   * The caller may give up on a call (its signal, its timeout): a held call
   * is dropped; a sent one's answer is dropped and counted when it comes. A
   * call past its timeout means the child may be wedged: it is recycled
   * (new calls wait for the next child).
   */
  #guard (p: Promise<Buffer>, id: number, signal: AbortSignal | undefined, timeoutMs: number | undefined): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      let stop: (() => void) | undefined
      const done = (): void => {
        if (timer !== undefined) clearTimeout(timer)
        stop?.()
      }
      const giveUp = (err: DlhostError, wedged: boolean): void => {
        done()
        reject(err)
        const h = this.#held.findIndex(x => x.id === id)
        if (h >= 0) {
          this.#held.splice(h, 1)
          this.#release(id)
          return
        }
        if (this.#res[id] === undefined) return
        this.#abandoned.add(id)
        this.#flush()
        this.#channel?.cancel(id)
        if (wedged && this.#child !== null && this.#state === 'running') {
          this.#recycled = this.#child
          this.#state = 'restarting'
          this.#child.kill('SIGKILL')
        }
      }
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => { this.#timeouts++; giveUp(new DlhostError('ERR_TIMEOUT', `no answer within ${timeoutMs} ms; the child is recycled`, { path: this.path }), true) }, timeoutMs)
      }
      if (signal !== undefined) {
        stop = onAbort(signal, () => giveUp(new DlhostError('ERR_ABORTED', 'the call was aborted', { path: this.path, cause: signal.reason }), false))
      }
      p.then(v => { done(); resolve(v) }, e => { done(); reject(e) })
    })
  }

  callSync (): never {
    throw new DlhostError('ERR_NOT_SYNC', 'callSync runs the handler on this thread: not for an isolated runtime', { path: this.path })
  }

  /** Graceful: every call sent is answered, the child unloads and exits (SIGTERM, then SIGKILL, past the bound). */
  unload (): Promise<void> {
    if (this.#state === 'unloading' || this.#state === 'unloaded') return this.#unloaded
    const prev = this.#state
    this.#state = 'unloading'
    this.#failHeld(new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path }))
    const child = this.#child
    if (child === null || prev !== 'running') {
      child?.kill('SIGKILL')
      if (child === null) { this.#state = 'unloaded'; this.#resolveUnloaded() }
      return this.#unloaded
    }
    this.#channel?.unload()
    const bound = this.#o.unloadTimeoutMs + 2000
    const term = setTimeout(() => { child.kill('SIGTERM'); setTimeout(() => child.kill('SIGKILL'), 1000).unref() }, bound)
    term.unref()
    void this.#unloaded.then(() => clearTimeout(term))
    child.ref() // unloading keeps the loop alive until the child is gone
    return this.#unloaded
  }

  /** Starts a fresh child (after a crash loop, or to pick up a rebuilt file at the same path). */
  async restart (): Promise<void> {
    if (this.#state === 'unloading' || this.#state === 'unloaded') throw new DlhostError('ERR_RUNTIME_UNLOADED', 'the runtime is unloaded', { path: this.path })
    this.#crashes = []
    this.#backoff = BACKOFF_MS
    this.#child?.kill('SIGKILL')
    this.#state = 'restarting'
    if (this.#child === null) this.#spawn()
  }

  get state (): string { return this.#state }
  get pid (): number | undefined { return this.#child?.pid }
  get restarts (): number { return this.#restarts }
  get unloadInfo (): NativeUnloadInfo | null { return this.#unloadInfo }
  get stats (): { queued: number, inFlight: number, completed: number, failed: number, misuse: number, late: number, messages: number, messagesRefused: number, timeouts: number, latency: LatencySummary, restarts: number, version: LibraryVersion } {
    return { queued: this.#held.length, inFlight: this.#inFlight, completed: this.#completed, failed: this.#failed, misuse: this.#unloadInfo?.misuse ?? 0, late: this.#late, messages: this.#messageCount, messagesRefused: this.#refusedBefore + (this.#channel?.messagesRefused() ?? 0), timeouts: this.#timeouts, latency: latencyBetween(this.histogram, null), restarts: this.#restarts, version: this.#version }
  }

  // Latencies of children that are gone (summed), and the current child's.
  #histBefore: Float64Array | null = null
  #channelHist: Float64Array | null = null
  #timeouts = 0

  /** @internal Call latencies over every child (csrc/histogram.h's layout), or null with metrics: false. */
  get histogram (): Float64Array | null {
    if (this.#channelHist !== null) this.#channel?.histogram(true) // the child's service times, copied out
    const now = this.#channelHist
    const before = this.#histBefore
    if (now === null) return before
    if (before === null) return now
    const sum = before.slice()
    addHistogram(sum, now)
    return sum
  }

  /** A child is gone: its latencies join the sum. */
  #keepHistogram (): void {
    const h = this.#channelHist
    this.#channelHist = null
    if (h === null) return
    if (this.#histBefore === null) this.#histBefore = h.slice()
    else addHistogram(this.#histBefore, h)
  }

  /** The plugin's messages from now on, as an async iterator; it ends when the runtime is unloaded. */
  messages (options?: MessagesOptions): AsyncIterableIterator<Buffer> {
    return this.#messages.iterate(options)
  }

  get version (): LibraryVersion { return this.#version }

  /** Its library, as libraries() would show it: in the child, not in this process. */
  get library (): { path: string, version: LibraryVersion, refs: number, pinned: boolean, runtimes: number, mapped: boolean, stuck: string | null } {
    return { path: this.path, version: this.#version, refs: 0, pinned: false, runtimes: this.#state === 'unloaded' ? 0 : 1, mapped: false, stuck: null }
  }

  /** Spin budgets are the child's own (the defaults); accepted for the Runtime interface. */
  setSpin (): void {}
}
