/**
 * Settling a call's promise without a closure per call (JS thread only).
 * `new Promise(capture)` hands out its resolve function; only resolve is
 * kept (one store per call). A failure resolves the promise with a rejected
 * one, which it adopts. Both runtimes keep their calls as resolve functions
 * in slot-indexed arrays: no object and no Map entry per call, which keeps a
 * pipelined burst's garbage short-lived (the scavenger then copies almost
 * nothing).
 */

/** @internal */
export type Resolve = (b: Buffer) => void

let captured: Resolve = () => {}
function capture (res: Resolve): void { captured = res }

/** @internal A pending promise; takeResolve() returns its resolve function. */
export function pending (): Promise<Buffer> { return new Promise<Buffer>(capture) }

/** @internal The resolve function of the promise pending() made last. */
export function takeResolve (): Resolve { return captured }

/** @internal Rejects through resolve (the promise adopts a rejected one). */
export function fail (res: Resolve | undefined, err: unknown): void {
  res?.(Promise.reject(err) as unknown as Buffer)
}
