/**
 * Messages from plugin threads (dlhost_emit, Level 5), for both runtimes:
 * 'message' events and `messages()` async iterators. The native side hands
 * them over in batches; an iterator that falls `highWaterMark` behind
 * pauses the flow, so messages wait in the runtime's bounded native queue
 * and dlhost_emit refuses (DLHOST_EAGAIN, counted) once it is full:
 * backpressure to the plugin, never a silent drop. A listener or an open
 * iterator keeps the event loop alive, as a socket with a 'data' listener
 * does. JS thread only.
 */
import { bufferView } from './view'
import { emitSafely, TypedEmitter } from './events'
import { rangeError, typeError } from './errors'
import { checkKeys } from './options'

/** The native end: pause/resume the flow; keep the loop alive for messages. */
export interface MessageFlow {
  flow (on: boolean): void
  ref (on: boolean): void
}

export interface MessagesOptions {
  /** Messages buffered by this iterator before the flow pauses (default 1024). */
  highWaterMark?: number
}
const MESSAGES_KEYS: Record<keyof MessagesOptions, true> = { highWaterMark: true }

interface Reader {
  queue: Buffer[]
  head: number
  hwm: number
  wake: ((r: IteratorResult<Buffer>) => void) | null
  done: boolean
}

export interface MessageEvents { message: [Buffer] }

/** @internal One runtime's messages. */
export class MessageHub {
  #emitter: TypedEmitter<MessageEvents>
  #native: MessageFlow | null = null
  #readers = new Set<Reader>()
  #paused = false
  #ended = false
  #listening = false

  constructor (emitter: TypedEmitter<MessageEvents>) {
    this.#emitter = emitter
    // Keep the loop alive while someone listens (see the file comment).
    const update = (): void => { queueMicrotask(() => this.#updateRef()) }
    emitter.on('newListener' as 'message', ((name: string) => { if (name === 'message') update() }) as unknown as (b: Buffer) => void)
    emitter.on('removeListener' as 'message', ((name: string) => { if (name === 'message') update() }) as unknown as (b: Buffer) => void)
  }

  /** The native end (a new one for each isolated child). */
  attach (native: MessageFlow | null): void {
    this.#native = native
    if (native === null) return
    this.#listening = false
    this.#updateRef()
    if (this.#paused) native.flow(false)
  }

  #updateRef (): void {
    const want = !this.#ended && (this.#readers.size > 0 || this.#emitter.listenerCount('message') > 0)
    if (want === this.#listening || this.#native === null) return
    this.#listening = want
    this.#native.ref(want)
  }

  /** A batch from the native side: [offset, length] pairs into `bodies`. */
  deliver (count: number, meta: Int32Array, bodies: ArrayBuffer): void {
    const readers = this.#readers
    const listen = this.#emitter.listenerCount('message') > 0
    for (let i = 0, m = 0; i < count; i++, m += 2) {
      const b = bufferView(bodies, meta[m] as number, meta[m + 1] as number)
      for (const r of readers) this.#push(r, b)
      if (listen) emitSafely(this.#emitter, 'message', b)
    }
    this.#checkFlow()
  }

  #push (r: Reader, b: Buffer): void {
    if (r.done) return
    if (r.wake !== null) {
      const wake = r.wake
      r.wake = null
      wake({ value: b, done: false })
      return
    }
    r.queue.push(b)
  }

  /** Pauses the native flow while any reader is at its mark; resumes when all are below half. */
  #checkFlow (): void {
    let full = false
    let low = true
    for (const r of this.#readers) {
      const n = r.queue.length - r.head
      if (n >= r.hwm) full = true
      if (n > r.hwm / 2) low = false
    }
    if (full && !this.#paused) {
      this.#paused = true
      this.#native?.flow(false)
    } else if (this.#paused && low) {
      this.#paused = false
      this.#native?.flow(true)
    }
  }

  /** The runtime ended: readers finish once they have read what they have. */
  end (): void {
    if (this.#ended) return
    this.#ended = true
    for (const r of this.#readers) {
      r.done = true
      if (r.wake !== null && r.head >= r.queue.length) {
        const wake = r.wake
        r.wake = null
        wake({ value: undefined, done: true })
      }
    }
    this.#updateRef()
  }

  /** An async iterator over the messages from now on (see MessagesOptions). */
  iterate (options?: MessagesOptions): AsyncIterableIterator<Buffer> {
    if (options !== undefined) checkKeys(options, MESSAGES_KEYS, 'messages() options')
    const hwm = options?.highWaterMark ?? 1024
    if (typeof hwm !== 'number') throw typeError('options.highWaterMark must be a number')
    if (!Number.isInteger(hwm) || hwm < 1) throw rangeError('options.highWaterMark must be an integer >= 1')
    const r: Reader = { queue: [], head: 0, hwm, wake: null, done: this.#ended }
    if (!r.done) this.#readers.add(r)
    this.#updateRef()
    const stop = (): void => {
      r.done = true
      r.queue = []
      r.head = 0
      this.#readers.delete(r)
      this.#updateRef()
      this.#checkFlow()
    }
    const it: AsyncIterableIterator<Buffer> = {
      next: async (): Promise<IteratorResult<Buffer>> => {
        if (r.head < r.queue.length) {
          const value = r.queue[r.head++] as Buffer
          if (r.head > 1024 && r.head * 2 > r.queue.length) { r.queue = r.queue.slice(r.head); r.head = 0 }
          if (this.#paused) this.#checkFlow()
          return { value, done: false }
        }
        if (r.done) { stop(); return { value: undefined, done: true } }
        return await new Promise(resolve => { r.wake = resolve })
      },
      return: async (): Promise<IteratorResult<Buffer>> => {
        const wake = r.wake
        r.wake = null
        stop()
        wake?.({ value: undefined, done: true })
        return { value: undefined, done: true }
      },
      [Symbol.asyncIterator] () { return it }
    }
    return it
  }
}
