import t from 'tap'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { EventEmitter } from 'events'
import { LibraryWatcher, type ChangeEvent, type LibraryWatcherOptions } from '../lib/reload/watch'
import { elfCompleteness } from '../lib/elf'
import { runChild } from './lib/helpers'

/** The type of a subtest's `t`. */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

const root = path.join(__dirname, '..')
/** Generous: the machine is small and tests run in parallel. Only failures wait this long. */
const TIMEOUT = 15000
const END = '#END\n'

/** Test "builds": complete when they end with #END. */
const isComplete = (buf: Buffer): boolean => buf.toString('latin1').endsWith(END)
const build = (tag: string): string => `build ${tag} ${'x'.repeat(tag.length * 7)}\n${END}`

function scratch (tt: Tap): string {
  const d = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-watch-test-')))
  tt.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

/** Records 'change' events and lets a test wait for the n-th one (or fail after TIMEOUT). */
class Recorder {
  readonly events: ChangeEvent[] = []
  readonly errors: Error[] = []
  readonly #bus = new EventEmitter()
  constructor (w: LibraryWatcher) {
    w.on('change', (e) => {
      this.events.push(e)
      this.#bus.emit('event')
    })
    w.on('error', (e) => { this.errors.push(e) })
  }

  /** Resolves with the n-th event (1-based) once it has arrived. */
  async nth (n: number, what = `change #${n}`): Promise<ChangeEvent> {
    if (this.events.length >= n) return this.events[n - 1]
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#bus.removeListener('event', on)
        reject(new Error(`timed out after ${TIMEOUT} ms waiting for ${what} (got ${this.events.length}: ${JSON.stringify(this.events.map((e) => [e.reason, e.trigger, e.stat.size]))})`))
      }, TIMEOUT)
      const on = (): void => {
        if (this.events.length < n) return
        clearTimeout(timer)
        this.#bus.removeListener('event', on)
        resolve(this.events[n - 1])
      }
      this.#bus.on('event', on)
    })
  }
}

/**
 * A barrier instead of a sleep: write a distinct complete build and wait for
 * its event. Settling is sequential per file, so any duplicate of an earlier
 * event would have arrived before this one.
 */
async function barrier (tt: Tap, rec: Recorder, file: string, expectedBefore: number): Promise<void> {
  const content = build(`barrier-${Math.random().toString(36).slice(2)}`)
  fs.writeFileSync(file, content)
  const e = await rec.nth(expectedBefore + 1, 'the barrier build')
  tt.equal(rec.events.length, expectedBefore + 1, `exactly ${expectedBefore} event(s) before the barrier`)
  tt.equal(e.stat.size, Buffer.byteLength(content), 'the barrier event is the barrier build')
}

function watcher (tt: Tap, file: string, opts: LibraryWatcherOptions = {}): [LibraryWatcher, Recorder] {
  const w = new LibraryWatcher(file, { settleMs: 30, isComplete, ...opts })
  const rec = new Recorder(w)
  tt.teardown(() => w.close())
  return [w, rec]
}

/** Replace `file` the way a linker / `mv` / `install` does: new inode, atomic rename. */
function renameOver (file: string, content: string): void {
  const tmp = `${file}.tmp-${process.pid}`
  fs.writeFileSync(tmp, content)
  fs.renameSync(tmp, file)
}

for (const mode of ['watch', 'poll'] as const) {
  const opts: LibraryWatcherOptions = mode === 'poll' ? { poll: 20 } : {}

  t.test(`${mode}: rename-over (mv / linker) triggers once`, async (t) => {
    const d = scratch(t)
    const lib = path.join(d, 'libplugin.so')
    fs.writeFileSync(lib, build('v1'))
    const [w, rec] = watcher(t, lib, opts)
    const settling: Array<{ stat: fs.Stats, at: number }> = []
    w.on('settling', (ev) => {
      t.equal(ev.path, lib)
      settling.push({ stat: ev.stat, at: performance.now() })
    })
    w.start()
    t.equal(w.mode, mode)
    // unrelated files in the same directory do not trigger
    fs.writeFileSync(path.join(d, 'other.so'), build('other'))
    const v2 = build('v2-by-rename')
    const t0 = performance.now()
    renameOver(lib, v2)
    const e = await rec.nth(1)
    t.equal(e.reason, 'library')
    t.equal(e.path, lib)
    t.equal(e.trigger, lib)
    t.equal(e.stat.size, Buffer.byteLength(v2))
    t.equal(e.stat.ino, fs.statSync(lib).ino, 'the new inode')
    t.equal(e.bytes?.toString(), v2, 'the event carries the settled content')
    t.ok(e.settledAt >= t0 + w.settleMs && e.settledAt <= performance.now(), 'settledAt: once stable for settleMs')
    const s = settling.find(x => x.stat.ino === e.stat.ino)
    t.ok(s !== undefined && s.at <= e.settledAt - w.settleMs, "a 'settling' event came a settle period before")
    const otherIno = fs.statSync(path.join(d, 'other.so')).ino
    t.ok(settling.every(x => x.stat.ino !== otherIno), 'never for other files in the directory')
    await barrier(t, rec, lib, 1)
    t.same(rec.errors, [])
  })

  t.test(`${mode}: in-place write (cp / fs.writeFile) triggers once after settling`, async (t) => {
    const d = scratch(t)
    const lib = path.join(d, 'libplugin.so')
    fs.writeFileSync(lib, build('v1'))
    const ino = fs.statSync(lib).ino
    const [w, rec] = watcher(t, lib, opts)
    w.start()
    // several writes in a row, same inode
    const fd = fs.openSync(lib, 'w')
    const v2 = build('v2-in-place-multi-chunk')
    for (let i = 0; i < v2.length; i += 8) fs.writeSync(fd, v2.slice(i, i + 8))
    fs.closeSync(fd)
    const e = await rec.nth(1)
    t.equal(e.stat.ino, ino, 'same inode')
    t.equal(e.stat.size, Buffer.byteLength(v2))
    await barrier(t, rec, lib, 1)
  })

  t.test(`${mode}: a half-written file triggers only once complete`, async (t) => {
    const d = scratch(t)
    const lib = path.join(d, 'libplugin.so')
    fs.writeFileSync(lib, build('v1'))
    const checks = new EventEmitter()
    const seen: Array<[number, boolean]> = []
    const spy = (buf: Buffer): boolean => {
      const r = isComplete(buf)
      seen.push([buf.length, r])
      checks.emit('check', buf.length, r)
      return r
    }
    const [w, rec] = watcher(t, lib, { ...opts, isComplete: spy })
    w.start()
    const full = build('v2-written-in-two-halves')
    const half = full.slice(0, Math.floor(full.length / 2))
    // the watcher must see (and reject) the half-written state: wait for it to check it
    const sawHalf = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the half-written file was never checked')), TIMEOUT)
      checks.on('check', (len: number, r: boolean) => {
        if (len === half.length && !r) {
          clearTimeout(timer)
          resolve()
        }
      })
    })
    const fd = fs.openSync(lib, 'w')
    fs.writeSync(fd, half)
    await sawHalf
    t.equal(rec.events.length, 0, 'nothing reported for the half')
    fs.writeSync(fd, full.slice(half.length))
    fs.closeSync(fd)
    const e = await rec.nth(1)
    t.equal(e.stat.size, Buffer.byteLength(full), 'reported with the complete size')
    t.ok(seen.some(([len, r]) => len === half.length && !r), 'the half was checked and found incomplete')
    await barrier(t, rec, lib, 1)
  })

  t.test(`${mode}: a missing path is waited for (and deleted + re-created)`, async (t) => {
    const d = scratch(t)
    const lib = path.join(d, 'build', 'out', 'lib', 'libplugin.so')
    const [w, rec] = watcher(t, lib, opts)
    w.start()
    fs.mkdirSync(path.dirname(lib), { recursive: true })
    const v1 = build('v1-appears')
    renameOver(lib, v1)
    const e1 = await rec.nth(1)
    t.equal(e1.stat.size, Buffer.byteLength(v1), 'reported when it appears complete')

    // deleted, then re-created
    fs.unlinkSync(lib)
    const v2 = build('v2-recreated')
    fs.writeFileSync(lib, v2)
    const e2 = await rec.nth(2)
    t.equal(e2.stat.size, Buffer.byteLength(v2))

    // the whole build directory removed and made again (`rm -rf build && make`)
    fs.rmSync(path.join(d, 'build'), { recursive: true })
    fs.mkdirSync(path.dirname(lib), { recursive: true })
    const v3 = build('v3-new-build-dir')
    fs.writeFileSync(lib, v3)
    const e3 = await rec.nth(3)
    t.equal(e3.stat.size, Buffer.byteLength(v3))
    await barrier(t, rec, lib, 3)
  })

  t.test(`${mode}: extra files trigger with reason 'file'`, async (t) => {
    const d = scratch(t)
    const lib = path.join(d, 'libplugin.so')
    const cfg = path.join(d, 'plugin.json')
    const later = path.join(d, 'conf.d', 'extra.json')
    fs.writeFileSync(lib, build('v1'))
    fs.writeFileSync(cfg, '{"a":1}')
    const [w, rec] = watcher(t, lib, { ...opts, files: [cfg, later] })
    w.start()
    fs.writeFileSync(cfg, '{"a":2,"b":3}') // no ELF/isComplete check for extra files
    const e1 = await rec.nth(1)
    t.equal(e1.reason, 'file')
    t.equal(e1.trigger, cfg)
    t.equal(e1.path, lib)
    fs.mkdirSync(path.dirname(later))
    fs.writeFileSync(later, 'x=1')
    const e2 = await rec.nth(2)
    t.equal(e2.reason, 'file', 'a missing extra file that appears triggers')
    t.equal(e2.trigger, later)
    await barrier(t, rec, lib, 2)
    t.equal(rec.events[2].reason, 'library')
  })

  t.test(`${mode}: markCurrent suppresses a no-op event`, async (t) => {
    const d = scratch(t)
    const lib = path.join(d, 'libplugin.so')
    fs.writeFileSync(lib, build('v1'))
    const [w, rec] = watcher(t, lib, opts)
    w.start()
    // the owner reloads by itself (e.g. plugin.reload()) and says so
    // before the watcher has settled on that content
    renameOver(lib, build('v2-loaded-by-owner'))
    w.markCurrent(fs.statSync(lib))
    // a metadata-only event on the same content: nothing to report either
    fs.chmodSync(lib, 0o755)
    await barrier(t, rec, lib, 0)
  })
}

t.test('watch: the build directory moved away and made anew', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'build', 'lib', 'libplugin.so')
  fs.mkdirSync(path.dirname(lib), { recursive: true })
  fs.writeFileSync(lib, build('v1'))
  const [w, rec] = watcher(t, lib)
  w.start()
  // the watched directory itself is moved: it reports its own move
  fs.renameSync(path.join(d, 'build', 'lib'), path.join(d, 'build', 'lib.old'))
  fs.mkdirSync(path.join(d, 'build', 'lib'))
  fs.writeFileSync(lib, build('v2-new-lib-dir'))
  const e1 = await rec.nth(1)
  t.equal(e1.stat.ino, fs.statSync(lib).ino)
  // an ancestor is moved: inotify says nothing to the directory's watch; the
  // safety net (a stat every SAFETY_NET_MS) notices within a few seconds
  fs.renameSync(path.join(d, 'build'), path.join(d, 'build.old'))
  fs.mkdirSync(path.dirname(lib), { recursive: true })
  fs.writeFileSync(lib, build('v3-new-build-dir'))
  const e2 = await rec.nth(2)
  t.equal(e2.stat.ino, fs.statSync(lib).ino)
  // and the new directory is the one watched now
  await barrier(t, rec, lib, 2)
  // nothing from the old, moved-away copy
  fs.writeFileSync(path.join(d, 'build.old', 'lib', 'libplugin.so'), build('old-tree-write'))
  await barrier(t, rec, lib, 3)
})

t.test('markCurrent before start: what is on disk now differs and is reported at once', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  fs.writeFileSync(lib, build('v1'))
  const loaded = fs.statSync(lib)
  renameOver(lib, build('v2-built-while-loading'))
  const [w, rec] = watcher(t, lib)
  w.markCurrent(loaded)
  w.start()
  const e = await rec.nth(1)
  t.equal(e.stat.ino, fs.statSync(lib).ino)
  await barrier(t, rec, lib, 1)
})

t.test('without markCurrent, the file present at start is the baseline', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  fs.writeFileSync(lib, build('v1'))
  const [w, rec] = watcher(t, lib)
  w.start()
  w.start() // idempotent
  await barrier(t, rec, lib, 0)
})

t.test('a symlinked library: rewriting the target and re-pointing the link both trigger', async (t) => {
  const d = scratch(t)
  fs.mkdirSync(path.join(d, 'real'))
  fs.mkdirSync(path.join(d, 'lib'))
  const v1 = path.join(d, 'real', 'libplugin.so.1')
  const v2 = path.join(d, 'real', 'libplugin.so.2')
  fs.writeFileSync(v1, build('v1'))
  const link = path.join(d, 'lib', 'libplugin.so')
  fs.symlinkSync(v1, link)
  const [w, rec] = watcher(t, link)
  w.start()
  // in-place rewrite of the target, in another directory
  fs.writeFileSync(v1, build('v1-rewritten-in-place'))
  const e1 = await rec.nth(1)
  t.equal(e1.trigger, link)
  t.equal(e1.stat.ino, fs.statSync(v1).ino)
  // `ln -sf libplugin.so.2 libplugin.so`
  fs.writeFileSync(v2, build('v2-new-target'))
  const tmp = path.join(d, 'lib', 'tmp-link')
  fs.symlinkSync(v2, tmp)
  fs.renameSync(tmp, link)
  const e2 = await rec.nth(2)
  t.equal(e2.stat.ino, fs.statSync(v2).ino, 'the new target')
  // and the new target is now watched as well
  fs.writeFileSync(v2, build('v2-rewritten-in-place'))
  const e3 = await rec.nth(3)
  t.equal(e3.stat.size, fs.statSync(v2).size)
  await barrier(t, rec, link, 3)
})

t.test('fs.watch failing (ENOSPC) falls back to polling', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  fs.writeFileSync(lib, build('v1'))
  const mocked = t.mockRequire<typeof import('../lib/reload/watch')>('../lib/reload/watch', {
    fs: {
      ...fs,
      watch: () => {
        throw Object.assign(new Error('ENOSPC: System limit for number of file watchers reached, watch'), { code: 'ENOSPC', errno: -28 })
      }
    }
  })
  const w = new mocked.LibraryWatcher(lib, { settleMs: 20, isComplete })
  t.teardown(() => w.close())
  const rec = new Recorder(w)
  w.start()
  t.equal(w.mode, 'poll', 'polling instead')
  renameOver(lib, build('v2-seen-by-polling'))
  await rec.nth(1)
  await barrier(t, rec, lib, 1)
})

t.test('an fs.watch error later also falls back to polling', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  fs.writeFileSync(lib, build('v1'))
  const watchers: fs.FSWatcher[] = []
  const mocked = t.mockRequire<typeof import('../lib/reload/watch')>('../lib/reload/watch', {
    fs: {
      ...fs,
      watch: (...args: Parameters<typeof fs.watch>) => {
        const fsw = fs.watch(...args)
        watchers.push(fsw)
        return fsw
      }
    }
  })
  const w = new mocked.LibraryWatcher(lib, { settleMs: 20, isComplete })
  t.teardown(() => w.close())
  const rec = new Recorder(w)
  w.start()
  t.equal(w.mode, 'watch')
  t.equal(watchers.length, 1)
  watchers[0].emit('error', Object.assign(new Error('EMFILE'), { code: 'EMFILE' }))
  t.equal(w.mode, 'poll')
  renameOver(lib, build('v2-after-error'))
  await rec.nth(1)
  await barrier(t, rec, lib, 1)
})

t.test('real ELF: a partial copy of libm is not reported, the complete one is', async (t) => {
  const libm = ['/usr/lib/x86_64-linux-gnu/libm.so.6', '/lib/x86_64-linux-gnu/libm.so.6', '/usr/lib64/libm.so.6']
    .find((p) => fs.existsSync(p))
  if (libm === undefined) {
    t.pass('skipped: no libm.so.6 on this machine')
    return
  }
  const bytes = fs.readFileSync(libm)
  t.ok(elfCompleteness(bytes).complete, 'libm is complete')
  const partial = bytes.subarray(0, Math.floor(bytes.length / 2))
  t.notOk(elfCompleteness(partial).complete, 'half of it is not')

  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  // Two watchers on the same file: one with the default isComplete (the ELF
  // check), one with the ELF check behind a spy so the test can tell when the
  // partial file has been looked at.
  const [wDefault, recDefault] = watcher(t, lib, { isComplete: undefined })
  const checks = new EventEmitter()
  const [wSpy, recSpy] = watcher(t, lib, {
    isComplete: (buf) => {
      const r = elfCompleteness(buf).complete
      checks.emit('check', buf.length, r)
      return r
    }
  })
  wDefault.start()
  wSpy.start()
  const sawPartial = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the partial ELF was never checked')), TIMEOUT)
    checks.on('check', (len: number, r: boolean) => {
      if (len === partial.length && !r) {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  const fd = fs.openSync(lib, 'w')
  fs.writeSync(fd, partial)
  await sawPartial
  t.equal(recDefault.events.length + recSpy.events.length, 0, 'partial ELF not reported')
  fs.writeSync(fd, bytes.subarray(partial.length))
  fs.closeSync(fd)
  const [a, b] = await Promise.all([recDefault.nth(1), recSpy.nth(1)])
  t.equal(a.stat.size, bytes.length, 'default isComplete: reported once complete')
  t.equal(b.stat.size, bytes.length)

  // not-ELF content is never reported by the default check; a real one is
  fs.writeFileSync(lib, build('not-an-elf'))
  // (a pending promise does not keep the event loop alive, and the watcher
  // deliberately does not either: every wait holds a ref'd timeout)
  const sawText = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the text file was never checked')), TIMEOUT)
    checks.on('check', (_len: number, r: boolean) => {
      if (!r) {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  await sawText
  fs.copyFileSync(libm, path.join(d, 'tmp.so'))
  fs.renameSync(path.join(d, 'tmp.so'), lib)
  const [a2] = await Promise.all([recDefault.nth(2), recSpy.nth(2)])
  t.equal(a2.stat.size, bytes.length)
  t.equal(recDefault.events.length, 2, 'the text file in between was not reported')
})

t.test('isComplete throwing is an error event, not a change', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  fs.writeFileSync(lib, build('v1'))
  let throwing = true
  const [w, rec] = watcher(t, lib, {
    isComplete: (buf) => {
      if (throwing) throw new Error('checker bug')
      return isComplete(buf)
    }
  })
  const err = new Promise<Error>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no error event')), TIMEOUT)
    w.once('error', (e) => {
      clearTimeout(timer)
      resolve(e)
    })
  })
  w.start()
  renameOver(lib, build('v2'))
  const e = await err
  t.match(e, { code: 'ERR_INVALID_ARG', path: lib })
  t.match(e.message, /checker bug/)
  t.equal(rec.events.length, 0)
  throwing = false
  await barrier(t, rec, lib, 0)
})

t.test('close(): no events afterwards, every watcher closed, idempotent', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  fs.writeFileSync(lib, build('v1'))
  const open = new Set<fs.FSWatcher>()
  const mocked = t.mockRequire<typeof import('../lib/reload/watch')>('../lib/reload/watch', {
    fs: {
      ...fs,
      watch: (...args: Parameters<typeof fs.watch>) => {
        const fsw = fs.watch(...args)
        open.add(fsw)
        fsw.on('close', () => open.delete(fsw))
        return fsw
      }
    }
  })
  const w = new mocked.LibraryWatcher(lib, {
    settleMs: 20,
    isComplete,
    files: [path.join(d, 'cfg.json'), path.join(d, 'not', 'yet', 'there.json'), '/etc/hostname']
  })
  const closedRec = new Recorder(w)
  w.start()
  t.ok(open.size >= 2, `watching several directories (${open.size})`)
  // mid-settle close
  renameOver(lib, build('v2'))
  w.close()
  w.close()
  t.equal(w.mode, 'idle')
  t.throws(() => w.start(), { code: 'ERR_CLOSED' })
  w.markCurrent(fs.statSync(lib)) // harmless after close
  // an fs.watch 'close' event is emitted on the next tick
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(open.size, 0, 'every fs.watch handle closed')
  // a second, live watcher is the barrier: by the time it reports, the closed one would have too
  const [w2, rec2] = watcher(t, lib)
  w2.start()
  renameOver(lib, build('v3'))
  await rec2.nth(1)
  await barrier(t, rec2, lib, 1)
  t.equal(closedRec.events.length, 0, 'no event from the closed watcher')
})

t.test('argument validation', async (t) => {
  t.throws(() => new LibraryWatcher(1 as unknown as string), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  t.throws(() => new LibraryWatcher(''), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
  t.throws(() => new LibraryWatcher('x', null as unknown as LibraryWatcherOptions), { name: 'TypeError' })
  t.throws(() => new LibraryWatcher('x', { settleMs: -1 }), { name: 'RangeError' })
  t.throws(() => new LibraryWatcher('x', { settleMs: Infinity }), { name: 'RangeError' })
  t.throws(() => new LibraryWatcher('x', { settleMs: '5' as unknown as number }), { name: 'TypeError' })
  t.throws(() => new LibraryWatcher('x', { poll: 0 }), { name: 'RangeError' })
  t.throws(() => new LibraryWatcher('x', { poll: true as unknown as number }), { name: 'TypeError' })
  t.throws(() => new LibraryWatcher('x', { files: 'a' as unknown as string[] }), { name: 'TypeError' })
  t.throws(() => new LibraryWatcher('x', { files: [3 as unknown as string] }), { name: 'TypeError' })
  t.throws(() => new LibraryWatcher('x', { isComplete: 1 as unknown as () => boolean }), { name: 'TypeError' })
  const w = new LibraryWatcher('x')
  t.throws(() => w.markCurrent({} as fs.Stats), { name: 'TypeError' })
  t.equal(w.path, path.resolve('x'))
  t.equal(w.settleMs, 50, 'default settleMs')
  t.equal(w.mode, 'idle')
  w.close()
})

t.test('an idle watcher never keeps the process alive; close() releases every handle', async (t) => {
  const d = scratch(t)
  const lib = path.join(d, 'libplugin.so')
  fs.writeFileSync(lib, build('v1'))
  const mod = JSON.stringify(path.join(root, 'lib', 'reload', 'watch.ts'))
  const complete = `(b) => b.toString('latin1').endsWith(${JSON.stringify(END)})`

  // 1. started watchers (fs.watch, an ancestor watch for a missing path,
  //    polling) that are never closed: the process must still exit by itself
  const idle = path.join(d, 'idle.js')
  fs.writeFileSync(idle, `
    const { LibraryWatcher } = require(${mod})
    const a = new LibraryWatcher(${JSON.stringify(lib)}, { isComplete: ${complete}, files: [${JSON.stringify(path.join(d, 'cfg'))}] }).start()
    const b = new LibraryWatcher(${JSON.stringify(path.join(d, 'no', 'such', 'lib.so'))}).start()
    const c = new LibraryWatcher(${JSON.stringify(lib)}, { poll: 10, isComplete: ${complete} }).start()
    // a change is in the middle of settling as the script ends
    require('fs').writeFileSync(${JSON.stringify(lib)}, 'partial')
    console.log('started', a.mode, b.mode, c.mode)
  `)
  const r1 = await runChild(idle)
  t.equal(r1.code, 0, `exited by itself (stderr: ${r1.stderr.slice(0, 500)})`)
  t.match(r1.stdout, /started watch watch poll/)

  // 2. a watcher that saw a change and was closed holds no handle, timer or watch
  fs.writeFileSync(lib, build('v1'))
  const closing = path.join(d, 'closing.js')
  fs.writeFileSync(closing, `
    const fs = require('fs')
    const ah = require('async_hooks')
    const live = new Map()
    const kinds = new Set(['FSEVENTWRAP', 'STATWATCHER', 'Timeout'])
    ah.createHook({
      init (id, type) { if (kinds.has(type)) live.set(id, type) },
      destroy (id) { live.delete(id) }
    }).enable()
    const fds = () => fs.readdirSync('/proc/self/fd')
      .map((fd) => { try { return fs.readlinkSync('/proc/self/fd/' + fd) } catch { return null } })
      .filter((l) => l !== null && !l.includes('inotify') && !l.startsWith('/proc/'))
    const inotifyWatches = () => {
      let n = 0
      for (const fd of fs.readdirSync('/proc/self/fd')) {
        let l
        try { l = fs.readlinkSync('/proc/self/fd/' + fd) } catch { continue }
        if (!l.includes('inotify')) continue
        try { n += (fs.readFileSync('/proc/self/fdinfo/' + fd, 'utf8').match(/^inotify wd:/mg) || []).length } catch {}
      }
      return n
    }
    const { LibraryWatcher } = require(${mod})
    const fdsBefore = fds().length
    const modes = ['watch', 'poll']
    let round = 0
    const next = () => {
      if (round === modes.length) {
        clearInterval(keep)
        // destroy hooks run asynchronously
        setImmediate(() => setImmediate(() => {
          console.log(JSON.stringify({ live: [...live.values()], fdsBefore, fdsAfter: fds().length, inotifyWatches: inotifyWatches() }))
        }))
        return
      }
      const mode = modes[round++]
      const w = new LibraryWatcher(${JSON.stringify(lib)}, {
        settleMs: 10, poll: mode === 'poll' ? 10 : false, isComplete: ${complete},
        files: [${JSON.stringify(path.join(d, 'cfg'))}, ${JSON.stringify(path.join(d, 'no', 'such', 'cfg'))}]
      })
      w.on('change', (e) => {
        console.log('change', mode, e.reason, e.stat.size)
        w.close()
        next()
      })
      w.start()
      if (mode === 'watch') console.log('inotify watches while running', inotifyWatches())
      const tmp = ${JSON.stringify(lib)} + '.tmp'
      fs.writeFileSync(tmp, 'build ' + mode + ' ' + 'y'.repeat(round * 10) + ${JSON.stringify(END)})
      fs.renameSync(tmp, ${JSON.stringify(lib)})
    }
    // keep the process alive only until both rounds are done
    const keep = setInterval(() => {}, 1000)
    next()
  `)
  const r2 = await runChild(closing)
  t.equal(r2.code, 0, `exited by itself (stderr: ${r2.stderr.slice(0, 800)})`)
  t.match(r2.stdout, /change watch library/)
  t.match(r2.stdout, /change poll library/)
  const running = /inotify watches while running (\d+)/.exec(r2.stdout)
  t.ok(running !== null && Number(running[1]) >= 1, 'inotify watches were in use while running')
  const line = r2.stdout.split('\n').find((l) => l.startsWith('{'))
  t.ok(line, 'resource report printed')
  if (line !== undefined) {
    const rep = JSON.parse(line) as { live: string[], fdsBefore: number, fdsAfter: number, inotifyWatches: number }
    t.same(rep.live, [], 'no fs.watch handle or timer alive after close()')
    t.equal(rep.inotifyWatches, 0, 'no inotify watch left')
    t.equal(rep.fdsAfter, rep.fdsBefore, 'no file descriptor left open')
  }
})
