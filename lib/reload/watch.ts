/**
 * Watch a loaded library (and extra files such as its config) and say when a
 * new, complete build has settled: Webware's ImportSpy (which watches the
 * files a process loaded and restarts it), done right for a plugin host.
 *
 * - Directory events, not file events: the parent directory of every watched
 *   path is watched and events are filtered by name, because a linker, `mv`
 *   or `install` replaces the inode (a watch on the file itself goes stale),
 *   while `cp` / `fs.writeFile` rewrite it in place (seen as modify events of
 *   that name in the directory). A symlinked path is also watched at its
 *   target's directory, so rewriting the target is seen too.
 * - A path that does not exist (or whose directory does not) is waited for by
 *   watching its nearest existing ancestor directory; a watched directory
 *   that is deleted or replaced is re-armed.
 * - Polling (`fs.stat` every `poll` ms) when asked, when `fs.watch` fails
 *   (ENOSPC, EMFILE, …) and on filesystems whose changes inotify does not see
 *   (NFS, SMB/CIFS, FUSE, 9p, virtiofs, …). In watch mode a slow safety-net
 *   stat (every 2 s) catches what inotify cannot report (an ancestor moved,
 *   an event queue overflow).
 * - Debounce: a change is reported once the file's (size, mtimeMs, ino) have
 *   stayed the same for `settleMs` and the content is complete (by default:
 *   the ELF parses whole). Incomplete or unreadable content is re-checked on
 *   the next event/poll, never reported. What was last reported (or declared
 *   loaded with `markCurrent`) is never reported again.
 * - Nothing here keeps the event loop alive: watchers are non-persistent and
 *   every timer is unref'd; `close()` releases all of them.
 */
import * as fs from 'fs'
import * as path from 'path'
import { debuglog } from 'util'
import { C } from '../binding'
import { DlhostError, rangeError, typeError } from '../errors'
import { emitSafely, TypedEmitter } from '../events'
import { elfCompleteness } from '../elf'
import { MAX_BUILD_BYTES, SYNC_SNAPSHOT_LIMIT } from './copies'

const debug = debuglog('dlhost')

/** Polling interval when polling is chosen without an explicit `poll`. */
const DEFAULT_POLL_MS = 200
/** In fs.watch mode, how often the safety net stats the watched files. */
const SAFETY_NET_MS = 2000

/**
 * statfs f_type of filesystems where inotify does not see changes made
 * elsewhere (on the server, the host, the other side): poll there.
 */
const NO_INOTIFY_FS = new Set<number>([
  0x6969, // NFS
  0x517b, // SMB
  0xff534d42, // CIFS
  0xfe534d42, // SMB2
  0x65735546, // FUSE (sshfs, Docker Desktop grpcfuse, …)
  0x01021997, // 9p (WSL2, QEMU, gVisor)
  0x6a656a63, // virtiofs
  0x786f4256, // vboxsf
  0x00c36400, // Ceph
  0x0bd00bd0, // Lustre
  0x47504653, // GPFS
  0x6b414653, // AFS (kAFS)
  0x5346414f // OpenAFS
])

/** The identity a change is judged by. `fs.Stats` is one. */
export interface StatIdentity {
  size: number
  mtimeMs: number
  ino: number
}

export interface ChangeEvent {
  /** The watched library's path (absolute). */
  path: string
  /** 'library' when the library changed, 'file' when an extra file did. */
  reason: 'library' | 'file'
  /** The file whose change this is (the library's path, or an extra file). */
  trigger: string
  /** The settled stat of `trigger` (for 'library': what `markCurrent` wants once loaded). */
  stat: fs.Stats
  /**
   * For 'library': the content judged complete, read after it settled and
   * belonging to `stat` (load exactly this: the file may move on).
   */
  bytes?: Buffer
  /** performance.now() when the file was seen settled (stable for settleMs). */
  settledAt: number
}

/** A library change seen and not settled yet: its owner may prepare (read, copy, validate) meanwhile. */
export interface SettlingEvent {
  path: string
  /** The stat the settle period started from. */
  stat: fs.Stats
}

export interface LibraryWatcherOptions {
  /** How long (size, mtimeMs, ino) must stay unchanged (ms, default 50). */
  settleMs?: number
  /** Poll every `poll` ms instead of using fs.watch; `false`/absent: fs.watch. */
  poll?: number | false
  /** Extra files (e.g. a config) whose change also triggers, with reason 'file'. */
  files?: string[]
  /** Is this content a complete build? Default: `elfCompleteness(buf).complete`. */
  isComplete?: (buf: Buffer) => boolean
  /**
   * How long a settled library may stay incomplete or not ELF before it is
   * reported as a bad build ('error', ERR_INCOMPLETE or ERR_NOT_ELF). Default
   * max(1000, 4 × settleMs) ms. A file still growing is not reported.
   */
  badBuildMs?: number
  /** Largest build read, in bytes (default MAX_BUILD_BYTES). */
  maxBuildBytes?: number
}

interface Events {
  change: [ChangeEvent]
  settling: [SettlingEvent]
  error: [Error]
}

interface Target {
  kind: 'library' | 'file'
  file: string
  /** Last reported (or marked current) identity; null: nothing yet (report on appearance). */
  last: StatIdentity | null
  /** Was `last` set by markCurrent() before start()? */
  marked: boolean
  /** Key of the last stat seen by a poll / the safety net / a settle. */
  observed: string
  /** The watched directory entries: the path, and its real path when it is a symlink. */
  points: Point[]
  dirty: boolean
  busy: boolean
}

interface Point {
  target: Target
  path: string
  dir: string
  base: string
  /** The directory being watched for this point: `dir` or its nearest existing ancestor. */
  at: string | null
}

interface DirWatch {
  dir: string
  fsw: fs.FSWatcher
  dev: number
  ino: number
  points: Set<Point>
}

interface Delay {
  timer: NodeJS.Timeout
  resolve: () => void
}

function errCode (err: unknown): string | undefined {
  const c = (err as { code?: unknown } | null)?.code
  return typeof c === 'string' ? c : undefined
}

/** What a change is judged by, ctime included: equal keys, same file content. */
export function statKey (st: fs.Stats | null): string {
  return st === null ? 'missing' : `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`
}

function sameIdentity (a: StatIdentity, b: StatIdentity | null): boolean {
  return b !== null && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino
}

function sameStable (a: fs.Stats, b: fs.Stats): boolean {
  return sameIdentity(a, b) && a.dev === b.dev
}

function identity (st: StatIdentity): StatIdentity {
  return { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino }
}

function statSyncOrNull (p: string): fs.Stats | null {
  try {
    return fs.statSync(p)
  } catch {
    return null
  }
}

async function statOrNull (p: string): Promise<fs.Stats | null> {
  try {
    return await fs.promises.stat(p)
  } catch (err) {
    const code = errCode(err)
    if (code !== 'ENOENT' && code !== 'ENOTDIR') debug('watch: stat %s: %s', p, code)
    return null
  }
}

function realpathOrNull (p: string): string | null {
  try {
    return fs.realpathSync.native(p) // one syscall, not an lstat per component
  } catch {
    return null
  }
}

function defaultIsComplete (buf: Buffer): boolean {
  return elfCompleteness(buf).complete
}

/**
 * Watches a library path (and extra files) and emits `'change'` once per
 * settled, complete change. Events: `'change'` (ChangeEvent), `'settling'`
 * (SettlingEvent: each settle period of the library starts), `'error'`.
 */
export class LibraryWatcher extends TypedEmitter<Events> {
  /** The library's absolute path. */
  readonly path: string
  readonly settleMs: number
  readonly #poll: number | false
  readonly #isComplete: (buf: Buffer) => boolean
  readonly #badBuildMs: number
  readonly #maxBuildBytes: number
  // A settled library that is not a whole build: reported once it stayed so.
  #bad: { key: string, timer: NodeJS.Timeout | null, reported: boolean } | null = null
  readonly #library: Target
  readonly #targets: Target[]
  readonly #dirs = new Map<string, DirWatch>()
  readonly #delays = new Set<Delay>()
  #mode: 'idle' | 'watch' | 'poll' = 'idle'
  #interval: NodeJS.Timeout | null = null
  #ticking = false
  #started = false
  #closed = false

  constructor (libraryPath: string, opts: LibraryWatcherOptions = {}) {
    super()
    if (typeof libraryPath !== 'string') throw typeError('LibraryWatcher(path): path must be a string')
    if (libraryPath === '' || libraryPath.includes('\0')) throw rangeError('LibraryWatcher(path): path must be a non-empty string without NUL bytes')
    if (opts === null || typeof opts !== 'object') throw typeError('LibraryWatcher(path, opts): opts must be an object')
    const { settleMs = C.DEFAULT_SETTLE_MS, poll = false, files = [], isComplete = defaultIsComplete } = opts
    const badBuildMs = opts.badBuildMs ?? Math.max(1000, 4 * settleMs)
    const maxBuildBytes = opts.maxBuildBytes ?? MAX_BUILD_BYTES
    if (typeof badBuildMs !== 'number' || !(badBuildMs >= 0) || badBuildMs > 2 ** 31 - 1) throw rangeError('opts.badBuildMs must be a number of ms >= 0')
    if (typeof maxBuildBytes !== 'number' || !(maxBuildBytes >= 1)) throw rangeError('opts.maxBuildBytes must be a number >= 1')
    if (typeof settleMs !== 'number' || Number.isNaN(settleMs)) throw typeError('opts.settleMs must be a number')
    if (settleMs < 0 || !Number.isFinite(settleMs) || settleMs > 2 ** 31 - 1) throw rangeError('opts.settleMs must be a finite number >= 0')
    if (poll !== false && typeof poll !== 'number') throw typeError('opts.poll must be a number of ms or false')
    if (typeof poll === 'number' && (!(poll >= 1) || poll > 2 ** 31 - 1)) throw rangeError('opts.poll must be >= 1 ms')
    if (!Array.isArray(files)) throw typeError('opts.files must be an array of paths')
    for (const f of files) {
      if (typeof f !== 'string') throw typeError('opts.files must contain only strings')
      if (f === '' || f.includes('\0')) throw rangeError('opts.files entries must be non-empty paths without NUL bytes')
    }
    if (typeof isComplete !== 'function') throw typeError('opts.isComplete must be a function')

    this.path = path.resolve(libraryPath)
    this.settleMs = settleMs
    this.#poll = poll
    this.#isComplete = isComplete
    this.#badBuildMs = badBuildMs
    this.#maxBuildBytes = maxBuildBytes
    this.#library = this.#makeTarget('library', this.path)
    this.#targets = [this.#library]
    const seen = new Set([this.path])
    for (const f of files) {
      const abs = path.resolve(f)
      if (seen.has(abs)) continue
      seen.add(abs)
      this.#targets.push(this.#makeTarget('file', abs))
    }
  }

  /** 'watch' (directory events), 'poll', or 'idle' (not started / closed). */
  get mode (): 'idle' | 'watch' | 'poll' {
    return this.#mode
  }

  /**
   * Start watching (idempotent). The library's and extra files' current
   * state is the baseline, unless `markCurrent()` said otherwise: a file
   * missing now is reported when it appears.
   */
  start (): this {
    if (this.#closed) throw new DlhostError('ERR_CLOSED', 'LibraryWatcher is closed', { path: this.path })
    if (this.#started) return this
    this.#started = true
    for (const t of this.#targets) {
      const st = statSyncOrNull(t.file)
      t.observed = statKey(st)
      if (!t.marked) t.last = st === null ? null : identity(st)
      this.#refreshPoints(t)
    }
    if (this.#poll !== false) {
      this.#startPolling(this.#poll, 'asked for')
    } else {
      this.#mode = 'watch'
      try {
        for (const t of this.#targets) for (const p of t.points) this.#arm(p)
        this.#interval = setInterval(() => { void this.#tick() }, SAFETY_NET_MS)
        this.#interval.unref()
      } catch (err) {
        this.#startPolling(DEFAULT_POLL_MS, `fs.watch failed (${errCode(err) ?? String(err)})`)
      }
    }
    // Look now at anything that differs from a markCurrent()'d identity, and
    // at anything that changed between the baseline stat and the watch.
    for (const t of this.#targets) {
      if (t.marked || (this.#mode === 'watch' && statKey(statSyncOrNull(t.file)) !== t.observed)) this.#kick(t)
    }
    return this
  }

  /**
   * Say what is loaded now: a settled library whose (size, mtimeMs, ino)
   * equal `stat`'s is not reported. If the file on disk differs, it is
   * (re)checked at once.
   */
  markCurrent (stat: StatIdentity): void {
    if (stat === null || typeof stat !== 'object' ||
        typeof stat.size !== 'number' || typeof stat.mtimeMs !== 'number' || typeof stat.ino !== 'number') {
      throw typeError('markCurrent(stat): stat must have numeric size, mtimeMs and ino (an fs.Stats will do)')
    }
    this.#library.last = identity(stat)
    this.#library.marked = true
    if (this.#started && !this.#closed) this.#kick(this.#library)
  }

  /** Stop watching and release every watcher and timer. Idempotent. */
  close (): void {
    if (this.#closed) return
    this.#closed = true
    this.#mode = 'idle'
    this.#clearBad()
    for (const dw of this.#dirs.values()) this.#closeDirWatch(dw)
    this.#dirs.clear()
    if (this.#interval !== null) clearInterval(this.#interval)
    this.#interval = null
    for (const d of this.#delays) {
      clearTimeout(d.timer)
      d.resolve()
    }
    this.#delays.clear()
  }

  // ─── targets and watch points ──────────────────────────────────────────

  #makeTarget (kind: 'library' | 'file', file: string): Target {
    const t: Target = { kind, file, last: null, marked: false, observed: 'missing', points: [], dirty: false, busy: false }
    t.points.push(this.#makePoint(t, file))
    return t
  }

  #makePoint (target: Target, p: string): Point {
    return { target, path: p, dir: path.dirname(p), base: path.basename(p), at: null }
  }

  /** Keep a second watch point on the real path when the path is a symlink. */
  #refreshPoints (t: Target): void {
    const real = realpathOrNull(t.file)
    const want = real !== null && real !== t.file ? real : null
    const cur = t.points.length > 1 ? t.points[1] : null
    if ((cur?.path ?? null) === want) return
    if (cur !== null) {
      this.#detach(cur)
      t.points.pop()
    }
    if (want !== null) {
      const p = this.#makePoint(t, want)
      t.points.push(p)
      if (this.#mode === 'watch') {
        try {
          this.#arm(p)
        } catch (err) {
          this.#startPolling(DEFAULT_POLL_MS, `fs.watch failed (${errCode(err) ?? String(err)})`)
        }
      }
    }
  }

  /** Watch the point's directory, or its nearest existing ancestor. Throws if fs.watch does. */
  #arm (p: Point): void {
    // Bounded: each round goes deeper unless directories churn under us.
    for (let round = 0; round < 64; round++) {
      const want = nearestExistingDir(p.dir)
      if (p.at !== want || !this.#dirs.has(want)) {
        this.#detach(p)
        let dw = this.#dirs.get(want)
        if (dw === undefined) {
          dw = this.#openDirWatch(want)
          this.#dirs.set(want, dw)
        }
        dw.points.add(p)
        p.at = want
        debug('watch: %s via %s%s', p.path, want, want === p.dir ? '' : ' (waiting for it to appear)')
      }
      // A deeper directory created before the watch was in place sent its
      // event to nobody: look again now that it is.
      if (want === p.dir || nearestExistingDir(p.dir) === want) return
    }
  }

  #detach (p: Point): void {
    if (p.at === null) return
    const dw = this.#dirs.get(p.at)
    p.at = null
    if (dw === undefined) return
    dw.points.delete(p)
    if (dw.points.size === 0) {
      this.#closeDirWatch(dw)
      this.#dirs.delete(dw.dir)
    }
  }

  #openDirWatch (dir: string): DirWatch {
    const st = fs.statSync(dir)
    if (typeof fs.statfsSync === 'function') {
      let type: number | undefined
      try {
        type = Number(fs.statfsSync(dir).type)
      } catch {}
      if (type !== undefined && NO_INOTIFY_FS.has(type)) {
        const e = new Error(`filesystem type 0x${type.toString(16)} of ${dir} does not report remote changes to inotify`) as Error & { code: string }
        e.code = 'ENOINOTIFY'
        throw e
      }
    }
    // persistent: false — an idle watcher never keeps the event loop alive.
    const fsw = fs.watch(dir, { persistent: false }, (event, name) => this.#onDirEvent(dir, event, name))
    const dw: DirWatch = { dir, fsw, dev: st.dev, ino: st.ino, points: new Set() }
    fsw.on('error', (err) => this.#onWatchError(dw, err))
    return dw
  }

  #closeDirWatch (dw: DirWatch): void {
    try {
      dw.fsw.close()
    } catch {}
  }

  #onDirEvent (dir: string, event: string, name: string | Buffer | null): void {
    if (this.#closed || this.#mode !== 'watch') return
    const dw = this.#dirs.get(dir)
    if (dw === undefined) return
    const fname = name === null ? null : String(name)
    for (const p of [...dw.points]) {
      if (p.at !== dir) continue
      if (p.dir === dir) {
        if (fname === null || fname === p.base) this.#kick(p.target)
      } else {
        // Waiting for p.dir to appear: only the next path component matters.
        const next = path.relative(dir, p.dir).split(path.sep)[0]
        if (fname === null || fname === next) {
          if (!this.#rearm(p)) return
          this.#kick(p.target)
        }
      }
    }
    // A directory deleted or moved away reports a 'rename' (its own name):
    // check that the path still names the directory being watched.
    if (event === 'rename') this.#verifyDir(dw)
  }

  /** Re-arm one point; on fs.watch failure switch to polling. False if that happened. */
  #rearm (p: Point): boolean {
    try {
      this.#arm(p)
      return true
    } catch (err) {
      this.#startPolling(DEFAULT_POLL_MS, `fs.watch failed (${errCode(err) ?? String(err)})`)
      return false
    }
  }

  /** Is `dw.dir` still the directory we watch? If not, re-arm its points. */
  #verifyDir (dw: DirWatch): void {
    if (this.#closed || this.#mode !== 'watch' || this.#dirs.get(dw.dir) !== dw) return
    const st = statSyncOrNull(dw.dir)
    if (st !== null && st.isDirectory() && st.ino === dw.ino && st.dev === dw.dev) return
    debug('watch: directory %s was replaced or removed; re-arming', dw.dir)
    this.#closeDirWatch(dw)
    this.#dirs.delete(dw.dir)
    const points = [...dw.points]
    for (const p of points) p.at = null
    for (const p of points) {
      if (!this.#rearm(p)) return
      this.#kick(p.target)
    }
  }

  #onWatchError (dw: DirWatch, err: Error): void {
    if (this.#closed || this.#dirs.get(dw.dir) !== dw) return
    this.#startPolling(DEFAULT_POLL_MS, `fs.watch error on ${dw.dir} (${errCode(err) ?? err.message})`)
  }

  #startPolling (ms: number, why: string): void {
    if (this.#closed || this.#mode === 'poll') return
    debug('watch: polling %s every %d ms: %s', this.path, ms, why)
    for (const dw of this.#dirs.values()) this.#closeDirWatch(dw)
    this.#dirs.clear()
    for (const t of this.#targets) for (const p of t.points) p.at = null
    if (this.#interval !== null) clearInterval(this.#interval)
    const wasWatching = this.#mode === 'watch'
    this.#mode = 'poll'
    this.#interval = setInterval(() => { void this.#tick() }, ms)
    this.#interval.unref()
    // Events may have been lost while the watch failed: look now.
    if (wasWatching) for (const t of this.#targets) this.#kick(t)
  }

  /** One poll (or safety-net) round: stat every target, kick the changed ones. */
  async #tick (): Promise<void> {
    if (this.#ticking || this.#closed) return
    this.#ticking = true
    try {
      if (this.#mode === 'watch') {
        for (const dw of [...this.#dirs.values()]) this.#verifyDir(dw)
        for (const t of this.#targets) for (const p of t.points) if (p.at !== null && p.at !== p.dir) this.#rearm(p)
      }
      for (const t of this.#targets) {
        const st = await statOrNull(t.file)
        if (this.#closed) return
        const key = statKey(st)
        if (key !== t.observed) {
          t.observed = key
          this.#kick(t)
        }
      }
    } finally {
      this.#ticking = false
    }
  }

  // ─── settling ──────────────────────────────────────────────────────────

  #kick (t: Target): void {
    if (this.#closed || !this.#started) return
    t.dirty = true
    if (t.busy) return // the running settle loop goes round again
    t.busy = true
    this.#settleLoop(t).catch((err: unknown) => this.#reportError(err))
  }

  async #settleLoop (t: Target): Promise<void> {
    try {
      while (t.dirty && !this.#closed) {
        t.dirty = false
        await this.#settleOnce(t)
      }
    } finally {
      t.busy = false
    }
  }

  async #settleOnce (t: Target): Promise<void> {
    let prev = await statOrNull(t.file)
    if (prev === null || this.#closed) return // missing: its appearance will be an event
    if (sameIdentity(prev, t.last)) {
      // What is current already: nothing to settle (a change after this
      // stat is another event, or another poll), so no settle period to
      // sit through while a real change waits behind it.
      t.observed = statKey(prev)
      return
    }
    let cur: fs.Stats
    for (;;) {
      this.#emitSettling(t, prev)
      // A timer fires by the loop's cached clock, which may be up to a loop
      // turn behind: count the settle period on the real clock.
      const since = performance.now()
      await this.#delay(this.settleMs)
      for (let left = since + this.settleMs - performance.now(); left > 0 && !this.#closed; left = since + this.settleMs - performance.now()) {
        await this.#delay(Math.ceil(left))
      }
      if (this.#closed) return
      const st = await statOrNull(t.file)
      if (st === null || this.#closed) return
      if (sameStable(prev, st)) {
        cur = st
        break
      }
      prev = st
    }
    const settledAt = performance.now()
    t.observed = statKey(cur)
    if (this.#mode === 'watch') this.#refreshPoints(t)
    if (!cur.isFile()) return
    if (sameIdentity(cur, t.last)) return
    if (t.kind === 'file') {
      t.last = identity(cur)
      this.#emitChange(t, cur, undefined, settledAt)
      return
    }
    if (cur.size > this.#maxBuildBytes) {
      // Never read into memory: reported as a bad build, once per file.
      this.#badBuild(cur, new DlhostError('ERR_BUILD_TOO_LARGE',
        `${t.file}: ${cur.size} bytes, more than the ${this.#maxBuildBytes} a build may have (maxBuildBytes)`,
        { path: t.file, reason: 'too large' }), 0)
      return
    }
    const buf = await readStable(t.file, cur)
    if (this.#closed) return
    if (buf === 'changed') {
      t.dirty = true
      return
    }
    if (buf === null) {
      debug('watch: %s is not readable yet; waiting for the next change', t.file)
      return
    }
    let complete: boolean
    try {
      complete = this.#isComplete(buf) === true
    } catch (err) {
      this.#reportError(new DlhostError('ERR_INVALID_ARG', `isComplete() threw on ${t.file}: ${err instanceof Error ? err.message : String(err)}`,
        { path: t.file, cause: err }))
      return
    }
    if (!complete) {
      debug('watch: %s is not complete (%d bytes); waiting for the next change', t.file, buf.length)
      const elf = buf.length >= 4 && buf[0] === 0x7f && buf[1] === 0x45 && buf[2] === 0x4c && buf[3] === 0x46
      this.#badBuild(cur, elf
        ? new DlhostError('ERR_INCOMPLETE', `${t.file}: an ELF file that stayed incomplete (${buf.length} bytes) for ${this.#badBuildMs} ms`, { path: t.file, reason: elfCompleteness(buf).reason ?? 'incomplete' })
        : new DlhostError('ERR_NOT_ELF', `${t.file}: settled as something that is not an ELF file (${buf.length} bytes)`, { path: t.file, reason: buf.length === 0 ? 'empty' : 'not an ELF file (bad magic)' }),
      this.#badBuildMs)
      return
    }
    if (this.#closed || sameIdentity(cur, t.last)) return // markCurrent() while we read
    this.#clearBad()
    t.last = identity(cur)
    this.#emitChange(t, cur, buf, settledAt)
  }

  /**
   * A settled library that is not a whole build: if the file is still the
   * same `st` after `ms`, report `err` ('error'), once for that file. A file
   * still being written changes meanwhile and is not reported.
   */
  #badBuild (st: fs.Stats, err: DlhostError, ms: number): void {
    const key = statKey(st)
    if (this.#bad?.key === key) return // pending or reported already
    this.#clearBad()
    const bad: { key: string, timer: NodeJS.Timeout | null, reported: boolean } = { key, timer: null, reported: false }
    this.#bad = bad
    const check = (): void => {
      bad.timer = null
      if (this.#bad !== bad || this.#closed) return
      void statOrNull(this.path).then(now => {
        if (this.#bad !== bad || this.#closed || statKey(now) !== key) return
        bad.reported = true
        this.#reportError(err)
      })
    }
    if (ms === 0) check()
    else {
      bad.timer = setTimeout(check, ms)
      bad.timer.unref()
    }
  }

  #clearBad (): void {
    if (this.#bad?.timer != null) clearTimeout(this.#bad.timer)
    this.#bad = null
  }

  /** A settle period of the library starts (not for what is already current). */
  #emitSettling (t: Target, st: fs.Stats): void {
    if (t.kind !== 'library' || !st.isFile() || sameIdentity(st, t.last) || this.listenerCount('settling') === 0) return
    emitSafely(this, 'settling', { path: this.path, stat: st })
  }

  #emitChange (t: Target, st: fs.Stats, bytes: Buffer | undefined, settledAt: number): void {
    const ev: ChangeEvent = { path: this.path, reason: t.kind, trigger: t.file, stat: st, settledAt }
    if (bytes !== undefined) ev.bytes = bytes
    debug('watch: %s changed (%s, %d bytes)', t.file, t.kind, st.size)
    emitSafely(this, 'change', ev)
  }

  #reportError (err: unknown): void {
    if (this.#closed) return
    const e = err instanceof Error ? err : new Error(String(err))
    if (this.listenerCount('error') > 0) {
      emitSafely(this, 'error', e)
    } else {
      process.emitWarning(e)
    }
  }

  #delay (ms: number): Promise<void> {
    return new Promise((resolve) => {
      const d: Delay = {
        timer: setTimeout(() => {
          this.#delays.delete(d)
          resolve()
        }, ms),
        resolve
      }
      d.timer.unref()
      this.#delays.add(d)
    })
  }
}

function readStableSync (file: string, expected: fs.Stats): Buffer | 'changed' | null {
  let fd: number
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0))
  } catch (err) {
    return errCode(err) === 'ENOENT' ? 'changed' : null
  }
  try {
    if (!sameStable(fs.fstatSync(fd), expected)) return 'changed'
    // One read of one byte more than expected: a longer file has changed.
    const buf = Buffer.allocUnsafe(expected.size + 1)
    let len = 0
    for (;;) {
      const n = fs.readSync(fd, buf, len, buf.length - len, null)
      if (n === 0) break
      len += n
      if (len === buf.length) return 'changed'
    }
    const after = fs.fstatSync(fd)
    if (!sameStable(after, expected) || len !== after.size) return 'changed'
    return buf.subarray(0, len)
  } catch {
    return null
  } finally {
    try { fs.closeSync(fd) } catch {}
  }
}

/** The nearest directory that exists: `dir` itself or an ancestor. */
function nearestExistingDir (dir: string): string {
  let cur = dir
  for (;;) {
    const st = statSyncOrNull(cur)
    if (st !== null && st.isDirectory()) return cur
    const up = path.dirname(cur)
    if (up === cur) return cur
    cur = up
  }
}

/**
 * Read a settled file, making sure the bytes belong to the stat that was
 * judged settled: 'changed' if it moved on meanwhile, null if unreadable.
 */
async function readStable (file: string, expected: fs.Stats): Promise<Buffer | 'changed' | null> {
  // Small files synchronously (as CopyStore reads them): a threadpool round
  // trip per step would cost more than the read, and this is on the way
  // from "settled" to "serving".
  if (expected.size <= SYNC_SNAPSHOT_LIMIT) return readStableSync(file, expected)
  let fh: fs.promises.FileHandle
  try {
    fh = await fs.promises.open(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0))
  } catch (err) {
    const code = errCode(err)
    return code === 'ENOENT' ? 'changed' : null
  }
  try {
    const before = await fh.stat()
    if (!sameStable(before, expected)) return 'changed'
    const buf = await fh.readFile()
    const after = await fh.stat()
    if (!sameStable(after, expected) || buf.length !== after.size) return 'changed'
    return buf
  } catch {
    return null
  } finally {
    await fh.close().catch(() => {})
  }
}
