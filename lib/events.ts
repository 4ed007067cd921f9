/**
 * Event plumbing shared by every class: emitting so that a listener's throw
 * never changes dlhost's own state or the outcome of the operation that
 * emitted, and one 'abort' listener per AbortSignal however many calls
 * share it. JS thread only.
 */
import { EventEmitter } from 'events'

/**
 * Emits `event`. A listener that throws does not stop the emitter's caller:
 * the error is rethrown on the next tick, so it surfaces as an uncaught
 * exception, the way a throw in any timer or I/O callback does in Node.
 * Call it once the state transition it reports is complete.
 */
export function emitSafely (emitter: EventEmitter, event: string | symbol, ...args: unknown[]): boolean {
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
