/**
 * The reader side of a streamed answer (runtime.stream(), Level 5), for
 * both runtimes: chunks arrive in batches from the native side; the plugin
 * may have at most `highWaterMark` of them unread (dlhost_task_send says
 * DLHOST_EAGAIN beyond), so a slow reader slows the plugin down and memory
 * stays bounded. Ending early (break, return(), an abort, a timeout) tells
 * the plugin (dlhost_task_cancelled, DLHOST_ECANCELLED). JS thread only.
 */
import { rangeError, typeError } from './errors'
import { checkKeys } from './options'
import type { CallOptions } from './runtime'
import { bufferView } from './view'

export interface StreamOptions extends CallOptions {
  /** Chunks the plugin may have sent and this reader not yet read (default 16). */
  highWaterMark?: number
}
const STREAM_KEYS: Record<keyof StreamOptions, true> = { signal: true, timeoutMs: true, key: true, highWaterMark: true }

/** The options stream() passes on to call(), and its high-water mark. */
export function streamOptions (options: StreamOptions | undefined): { call: CallOptions | undefined, hwm: number } {
  if (options === undefined) return { call: undefined, hwm: 16 }
  checkKeys(options, STREAM_KEYS, 'stream() options')
  const hwm = options.highWaterMark ?? 16
  if (typeof hwm !== 'number') throw typeError('options.highWaterMark must be a number')
  if (!Number.isInteger(hwm) || hwm < 1 || hwm > 65535) throw rangeError('options.highWaterMark must be an integer from 1 to 65535')
  const call: CallOptions = {}
  if (options.signal !== undefined) call.signal = options.signal
  if (options.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs
  return { call, hwm }
}

/**
 * @internal stream() of both runtimes: `call` makes the call whose answer
 * is streamed, with the reader bound to its slot.
 */
export function openStream (req: string | Uint8Array, options: StreamOptions | undefined,
  call: (req: string | Uint8Array, options: CallOptions | undefined, reader: StreamReader) => Promise<Buffer>): AsyncIterableIterator<Buffer> {
  const { call: callOptions, hwm } = streamOptions(options)
  const reader = new StreamReader(hwm)
  call(req, callOptions, reader).then(body => reader.finish(body), err => reader.fail(err))
  return reader.iterator()
}

/** @internal A batch of chunks ([id, offset, length] triples into `bodies`) to their readers. */
export function deliverChunks (streams: Array<StreamReader | undefined>, count: number, meta: Int32Array, bodies: ArrayBuffer): void {
  for (let i = 0, m = 0; i < count; i++, m += 3) {
    streams[meta[m] as number]?.push(bufferView(bodies, meta[m + 1] as number, meta[m + 2] as number))
  }
}

/** @internal The native hooks of one stream's slot, while it is the stream's. */
export interface StreamSlot {
  /** The reader took n chunks: the plugin may send n more. */
  read (n: number): void
  /** The reader stopped: dlhost_task_cancelled becomes true. */
  cancel (): void
}

/** @internal */
export class StreamReader {
  readonly hwm: number
  #slot: StreamSlot | null = null
  #queue: Buffer[] = []
  #head = 0
  #done = false
  #error: unknown = undefined
  #failed = false
  #wake: ((r: IteratorResult<Buffer>) => void) | null = null
  #wakeErr: ((e: unknown) => void) | null = null
  #stopped = false

  constructor (hwm: number) { this.hwm = hwm }

  /** The call took a slot: its hooks, until the answer frees it. */
  bind (slot: StreamSlot | null): void { this.#slot = slot }

  push (b: Buffer): void {
    if (this.#stopped) return
    if (this.#wake !== null) {
      const wake = this.#wake
      this.#wake = this.#wakeErr = null
      this.#slot?.read(1)
      wake({ value: b, done: false })
      return
    }
    this.#queue.push(b)
  }

  /** The answer: a non-empty body is the last chunk. */
  finish (body: Buffer): void {
    this.#slot = null
    if (body.length > 0) this.push(body)
    this.#end()
  }

  fail (err: unknown): void {
    this.#slot = null
    if (this.#stopped) return
    this.#failed = true
    this.#error = err
    this.#end()
  }

  #end (): void {
    this.#done = true
    if (this.#wake === null || this.#head < this.#queue.length) return
    const wake = this.#wake
    const wakeErr = this.#wakeErr
    this.#wake = this.#wakeErr = null
    if (this.#failed) { this.#failed = false; wakeErr?.(this.#error) } else wake({ value: undefined, done: true })
  }

  #stop (): void {
    if (this.#stopped) return
    this.#stopped = true
    this.#queue = []
    this.#head = 0
    if (!this.#done) this.#slot?.cancel()
  }

  iterator (): AsyncIterableIterator<Buffer> {
    const it: AsyncIterableIterator<Buffer> = {
      next: async (): Promise<IteratorResult<Buffer>> => {
        if (this.#head < this.#queue.length) {
          const value = this.#queue[this.#head++] as Buffer
          if (this.#head === this.#queue.length) { this.#queue = []; this.#head = 0 }
          this.#slot?.read(1)
          return { value, done: false }
        }
        if (this.#failed) { this.#failed = false; this.#stopped = true; throw this.#error }
        if (this.#done || this.#stopped) return { value: undefined, done: true }
        return await new Promise((resolve, reject) => { this.#wake = resolve; this.#wakeErr = reject })
      },
      return: async (): Promise<IteratorResult<Buffer>> => {
        this.#stop()
        const wake = this.#wake
        this.#wake = this.#wakeErr = null
        wake?.({ value: undefined, done: true })
        return { value: undefined, done: true }
      },
      [Symbol.asyncIterator] () { return it }
    }
    return it
  }
}
