/**
 * Trust: dlhost never runs code another local user could have planted.
 * OpenSSH's StrictModes (and sudo's checks on its plugins), applied to the
 * libraries a process loads: the file, and every directory on its real
 * path, must be owned by this process's uid or by root (or a uid the
 * caller named), and none may be writable by group or others, except a
 * sticky directory (such as /tmp), where nobody else can rename or delete
 * an entry that is not theirs. JS thread only.
 */
import fs from 'fs'
import path from 'path'
import { DlhostError, errnoError, typeError } from './errors'
import { checkKeys } from './options'

/**
 * How far trust goes. Default: this process's uid and root. `uids` adds
 * owners to trust (a build user, say); `'any'` turns the check off: then any
 * local user who can write the file or a directory above it chooses the code
 * this process runs.
 */
export type Trust = { uids?: number[] } | 'any'

const TRUST_KEYS: Record<'uids', true> = { uids: true }

/** Checks an options object's `trust`. */
export function checkTrustOption (trust: unknown): Trust | undefined {
  if (trust === undefined || trust === 'any') return trust
  if (trust === null || typeof trust !== 'object') throw typeError("options.trust must be { uids?: number[] } or 'any'")
  checkKeys(trust, TRUST_KEYS, 'options.trust')
  const uids = (trust as { uids?: unknown }).uids
  if (uids !== undefined && (!Array.isArray(uids) || !uids.every(u => Number.isInteger(u) && u >= 0))) {
    throw typeError('options.trust.uids must be an array of uids (non-negative integers)')
  }
  return trust as Trust
}

/** Why `file` may not be trusted, or null when it may. Never throws for a reason of trust. */
export function untrustedReason (file: string, trust: Trust = {}): { path: string, reason: string } | null {
  if (trust === 'any' || typeof process.geteuid !== 'function') return null
  const me = process.geteuid()
  const ok = new Set([me, 0, ...(trust.uids ?? [])])
  const who = (uid: number): string => `owned by uid ${uid}, not by this process (${me}), root${(trust.uids?.length ?? 0) > 0 ? ' or a trusted uid' : ''}`
  let real: string
  try { real = fs.realpathSync.native(file) } catch (err) { throw errnoError(err, file) }
  let st: fs.Stats
  try { st = fs.statSync(real) } catch (err) { throw errnoError(err, file) }
  if (!ok.has(st.uid)) return { path: real, reason: `the file is ${who(st.uid)}` }
  if ((st.mode & 0o022) !== 0) return { path: real, reason: `the file is writable by ${(st.mode & 0o020) !== 0 ? 'its group' : 'others'} (mode ${(st.mode & 0o7777).toString(8)})` }
  for (let dir = path.dirname(real); ; dir = path.dirname(dir)) {
    let d: fs.Stats
    try { d = fs.statSync(dir) } catch (err) { throw errnoError(err, dir) }
    if (!ok.has(d.uid)) return { path: dir, reason: `a directory on its path is ${who(d.uid)}` }
    // Sticky: others may add entries but not rename or delete ours, and the
    // entry below it was checked as ours (or root's) already.
    if ((d.mode & 0o022) !== 0 && (d.mode & 0o1000) === 0) {
      return { path: dir, reason: `a directory on its path is writable by ${(d.mode & 0o020) !== 0 ? 'its group' : 'others'} and not sticky (mode ${(d.mode & 0o7777).toString(8)})` }
    }
    if (path.dirname(dir) === dir) return null
  }
}

/** Throws ERR_UNTRUSTED (with the offending path and the reason) unless `file` may be trusted. */
export function checkTrusted (file: string, trust?: Trust): void {
  const why = untrustedReason(file, trust)
  if (why === null) return
  throw new DlhostError('ERR_UNTRUSTED',
    `${file}: refusing to load code another user could have planted: ${why.path}: ${why.reason} (options.trust widens this)`,
    { path: file, reason: `${why.path}: ${why.reason}` })
}
