/**
 * What a request is: a string, or the bytes of a Uint8Array (a Buffer is
 * one). Read through the intrinsic TypedArray accessors, never through
 * properties a subclass or a Proxy could override: the length that is
 * checked is the length that is copied. JS thread only.
 */
import { typeError } from './errors'

const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype) as object
function intrinsicGetter (name: PropertyKey): (this: unknown) => unknown {
  const get = Object.getOwnPropertyDescriptor(TypedArrayPrototype, name)?.get
  if (get === undefined) throw new Error(`no %TypedArray%.prototype ${String(name)} getter`)
  return get
}
const getTag = intrinsicGetter(Symbol.toStringTag) as (this: unknown) => string | undefined
const getByteLength = intrinsicGetter('byteLength') as (this: unknown) => number
const getBuffer = intrinsicGetter('buffer') as (this: unknown) => ArrayBufferLike

/**
 * The byte length of a Uint8Array request, or -1 for a string. Throws a
 * coded TypeError for anything else (a Proxy, another TypedArray, a view
 * of a detached ArrayBuffer).
 */
export function requestLength (req: unknown): number {
  if (typeof req === 'string') return -1
  // The tag getter answers undefined (never throws) for anything that is not a real TypedArray.
  if (getTag.call(req) !== 'Uint8Array') throw typeError('request must be a string or a Uint8Array')
  const n = getByteLength.call(req)
  if (n === 0 && isDetached(getBuffer.call(req))) throw typeError('request is a view of a detached ArrayBuffer (it was transferred)')
  return n
}

function isDetached (ab: ArrayBufferLike): boolean {
  try {
    // eslint-disable-next-line no-new
    new Uint8Array(ab, 0, 0)
    return false
  } catch {
    return true
  }
}
