/**
 * The checks every public entry point applies to its arguments before it
 * acts: a path (a file path, never a search name), and an options object
 * whose keys are all known: a misspelt key is refused with the closest
 * known one named, never ignored. JS thread only.
 */
import { invalidArg, typeError } from './errors'

/** A path argument: a non-empty string without NUL bytes (TypeError ERR_INVALID_ARG_TYPE / ERR_INVALID_ARG). */
export function checkPath (path: unknown): asserts path is string {
  if (typeof path !== 'string') throw typeError(`path must be a string, got ${path === null ? 'null' : typeof path}`)
  if (path.length === 0) throw invalidArg('path must not be empty')
  if (path.includes('\0')) throw invalidArg('path must not contain NUL bytes')
}

/** Levenshtein distance, for "did you mean". */
function distance (a: string, b: string): number {
  a = a.toLowerCase()
  b = b.toLowerCase()
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = row
  }
  return prev[b.length]
}

/** The known key closest to `key`, or null when none is close. */
export function closest (key: string, known: readonly string[]): string | null {
  let best: string | null = null
  let bestD = Infinity
  for (const k of known) {
    const d = distance(key, k)
    if (d < bestD) { best = k; bestD = d }
  }
  return bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : null
}

/**
 * Checks that `obj` is an object (or undefined) with only keys of `known`.
 * `what` names it in the message, e.g. 'reloadable() options'. The key list
 * is a Record over the options interface, so the compiler keeps it complete.
 */
export function checkKeys (obj: unknown, known: Readonly<Record<string, true>>, what: string): void {
  if (obj === undefined) return
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw typeError(`${what} must be an object`)
  for (const key in obj) {
    if (Object.hasOwn(known, key)) continue
    const names = Object.keys(known)
    const near = closest(key, names)
    throw invalidArg(`unknown key "${key}" in ${what}${near !== null ? `; did you mean "${near}"?` : `; known keys: ${names.join(', ')}`}`)
  }
}
