/** Buffer views over native slabs (answers, messages). JS thread only. */

// A Buffer over part of an ArrayBuffer, made the way Node makes its own
// (a Uint8Array subclass whose prototype is Buffer.prototype): about half the
// cost of Buffer.from(ab, off, len), which re-validates its arguments.
// Resolving a promise with an object looks up its `then`; on a Buffer that
// walks four prototypes, one of them a dictionary (~60 ns per call). An
// own `then: undefined` on the first prototype answers at once ("not a
// thenable"), and it is non-enumerable, so inspect() and JSON don't show it.
class BufferView extends Uint8Array {}
Object.setPrototypeOf(BufferView.prototype, Buffer.prototype)
Object.defineProperty(BufferView.prototype, 'constructor', { value: Buffer, writable: true, configurable: true })
Object.defineProperty(BufferView.prototype, 'then', { value: undefined, writable: true, configurable: true })
/** @internal */
export function bufferView (ab: ArrayBuffer, off: number, len: number): Buffer {
  return new BufferView(ab, off, len) as unknown as Buffer
}
