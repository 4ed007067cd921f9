/**
 * Event plumbing shared by every class: typed emitters, emitting so that a listener's throw
 * never changes dlhost's own state or the outcome of the operation that
 * emitted, and one 'abort' listener per AbortSignal however many calls
 * share it. JS thread only.
 */
import { EventEmitter } from 'events'

type Listener<E, K extends keyof E> = E[K] extends unknown[] ? (...args: E[K]) => void : never
type Typed = 'on' | 'once' | 'off' | 'addListener' | 'removeListener' | 'prependListener' | 'prependOnceListener' |
  'emit' | 'listenerCount' | 'listeners' | 'rawListeners' | 'removeAllListeners'

/**
 * An EventEmitter whose events are the keys of `E`, each with its listener
 * arguments: a wrong listener or an unknown event name fails to compile.
 * Declared here rather than taken from @types/node's generic EventEmitter,
 * whose checks differ between its versions (newer ones accept any name).
 */
export interface TypedEmitter<E> extends Omit<EventEmitter, Typed> {
  on<K extends keyof E & string>(event: K, listener: Listener<E, K>): this
  once<K extends keyof E & string>(event: K, listener: Listener<E, K>): this
  off<K extends keyof E & string>(event: K, listener: Listener<E, K>): this
  addListener<K extends keyof E & string>(event: K, listener: Listener<E, K>): this
  removeListener<K extends keyof E & string>(event: K, listener: Listener<E, K>): this
  prependListener<K extends keyof E & string>(event: K, listener: Listener<E, K>): this
  prependOnceListener<K extends keyof E & string>(event: K, listener: Listener<E, K>): this
  emit<K extends keyof E & string>(event: K, ...args: E[K] & unknown[]): boolean
  listenerCount<K extends keyof E & string>(event: K): number
  listeners<K extends keyof E & string>(event: K): Array<Listener<E, K>>
  rawListeners<K extends keyof E & string>(event: K): Array<Listener<E, K>>
  removeAllListeners(event?: keyof E & string): this
}

/** EventEmitter itself, typed as a TypedEmitter<E> base class. */
// eslint-disable-next-line @typescript-eslint/no-redeclare -- a value and its type, one name, as a class has
export const TypedEmitter = EventEmitter as unknown as new <E>() => TypedEmitter<E>

/**
 * Emits `event`. A listener that throws does not stop the emitter's caller:
 * the error is rethrown on the next tick, so it surfaces as an uncaught
 * exception, the way a throw in any timer or I/O callback does in Node.
 * Call it once the state transition it reports is complete.
 */
export function emitSafely<E, K extends keyof E & string> (emitter: TypedEmitter<E>, event: K, ...args: E[K] & unknown[]): boolean {
  try {
    return emitter.emit(event, ...args)
  } catch (err) {
    process.nextTick(() => { throw err })
    return true
  }
}

type AbortFn = () => void
interface Watch { fns: Set<AbortFn>, listener: () => void }
const watches = new WeakMap<AbortSignal, Watch>()

/**
 * Calls `fn` once when `signal` aborts; returns the function that stops
 * watching. Every call sharing a signal shares one listener on it (so no
 * MaxListenersExceededWarning however many calls are in flight).
 */
export function onAbort (signal: AbortSignal, fn: AbortFn): () => void {
  let w = watches.get(signal)
  if (w === undefined) {
    const fns = new Set<AbortFn>()
    const listener = (): void => {
      watches.delete(signal)
      for (const f of fns) {
        try { f() } catch (err) { process.nextTick(() => { throw err }) }
      }
      fns.clear()
    }
    w = { fns, listener }
    watches.set(signal, w)
    signal.addEventListener('abort', listener, { once: true })
  }
  const watch = w
  watch.fns.add(fn)
  return () => {
    if (!watch.fns.delete(fn) || watch.fns.size > 0) return
    if (watches.get(signal) === watch) watches.delete(signal)
    signal.removeEventListener('abort', watch.listener)
  }
}
