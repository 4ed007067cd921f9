// Level 5: state handed over across reloads (dlhost_state_export /
// dlhost_state_import) and cancellation the plugin can see
// (dlhost_task_cancelled), in process and isolated. The fixture is
// test/fixtures/plugins/counter.c: a counter whose count must never go
// backwards across versions.
import t, { Test } from 'tap'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { load, reloadable, DlhostError, type Plugin, type ReloadEvent } from '../lib/index'
import { fixture } from './lib/helpers'

type Isolate = 'process' | false
const counter = (abi: string, v: string): string => fixture(`counter_${abi}_${v}.so`)

function tmpdir (t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-state-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}
/** Replaces `dst` the way a linker does: a side file renamed over it. */
function install (src: string, dst: string): void {
  fs.copyFileSync(src, dst + '.tmp')
  fs.renameSync(dst + '.tmp', dst)
}
async function open (t: Test, src: string, opts: Record<string, unknown> = {}): Promise<{ plugin: Plugin, target: string, errors: DlhostError[] }> {
  const target = path.join(tmpdir(t), 'plugin.so')
  install(src, target)
  const plugin = await reloadable(target, null, { watch: false, strategy: 'shadow', ...opts })
  t.teardown(() => plugin.close())
  const errors: DlhostError[] = []
  plugin.on('error', e => errors.push(e))
  return { plugin, target, errors }
}
const num = async (p: Plugin, req: string): Promise<number> => Number((await p.call(req)).toString())

/**
 * Keeps `depth` "inc" calls in flight until stop(). Every answer is a
 * count; if the count never went backwards (no state lost, none exported
 * early), the answers are exactly 1..calls, each once. (Answers may reach
 * JS a microtask out of order: a held call settles one hop later than one
 * made after the hold, so the order of arrival proves nothing.)
 */
function pump (plugin: Plugin, depth: number): { stop: () => Promise<{ calls: number, failed: unknown[], repeated: number, outside: number }> } {
  let stopped = false
  let inFlight = 0
  const seen = new Set<number>()
  let repeated = 0
  const failed: unknown[] = []
  let finish!: (r: { calls: number, failed: unknown[], repeated: number, outside: number }) => void
  const done = new Promise<{ calls: number, failed: unknown[], repeated: number, outside: number }>(resolve => { finish = resolve })
  const issue = (): void => {
    inFlight++
    plugin.call('inc').then(b => {
      const n = Number(b.toString())
      if (seen.has(n)) repeated++
      seen.add(n)
    }, err => { failed.push(err) }).finally(() => {
      inFlight--
      if (!stopped) issue()
      else if (inFlight === 0) finish({ calls: seen.size, failed, repeated, outside: [...seen].filter(n => n < 1 || n > seen.size).length })
    })
  }
  for (let i = 0; i < depth; i++) issue()
  return { stop: () => { stopped = true; return done } }
}

for (const [abi, isolate, reloads] of [['host', false, 200], ['native', false, 200], ['host', 'process', 200], ['native', 'process', 200]] as Array<[string, Isolate, number]>) {
  t.test(`${abi}${isolate !== false ? ', isolated' : ''}: the count survives ${reloads} reloads under load (64 in flight), never going back, no call lost`, async t => {
    const { plugin, target, errors } = await open(t, counter(abi, 'v1'), { isolate })
    const events: ReloadEvent[] = []
    plugin.on('reload', ev => events.push(ev))
    const load = pump(plugin, 64)
    for (let i = 0; i < reloads; i++) {
      install(counter(abi, i % 2 === 0 ? 'v2' : 'v1'), target)
      await plugin.reload()
    }
    const r = await load.stop()
    t.same(r.failed, [], 'no call failed')
    t.equal(r.repeated, 0, 'no count answered twice: the count never went back')
    t.equal(r.outside, 0, 'the answers are exactly 1..calls: none skipped')
    t.equal(await num(plugin, 'get'), r.calls, 'the count is every inc made, across all versions')
    t.equal(events.length, reloads)
    t.ok(events.every(ev => ev.state?.bytes === 12 && ev.state.imported), 'each reload handed 12 bytes over')
    t.ok(events.every(ev => typeof ev.state?.pauseMs === 'number' && ev.state.pauseMs >= ev.state.drainMs), 'the pause is reported, drain included')
    t.equal(await num(plugin, 'version'), reloads % 2 === 0 ? 1 : 2)
    t.same(errors, [])
  })
}

for (const isolate of [false, 'process'] as Isolate[]) {
  const tag = isolate !== false ? ' (isolated)' : ''
  t.test(`a refused state rolls back: the old version serves on with its count${tag}`, async t => {
    for (const bad of ['refuse', 'noimport']) {
      const { plugin, target, errors } = await open(t, counter('host', 'v1'), { isolate })
      for (let i = 0; i < 5; i++) await plugin.call('inc')
      install(counter('host', bad), target)
      const during = Promise.all(Array.from({ length: 100 }, () => plugin.call('inc')))
      await t.rejects(plugin.reload(), { code: 'ERR_STATE_REJECTED' }, `${bad}: reload() rejects`)
      await during
      t.equal(errors.length, 1)
      t.equal(errors[0]?.code, 'ERR_STATE_REJECTED', `${bad}: 'error' says why`)
      t.equal(await num(plugin, 'version'), 1, `${bad}: the old version serves`)
      t.equal(await num(plugin, 'get'), 105, `${bad}: with its state intact, no call lost`)
      t.equal(plugin.versions.length, 1, `${bad}: the refused version left`)
      await plugin.close()
    }
  })

  t.test(`stateRejected: 'fresh' starts the new version without the state, and says so${tag}`, async t => {
    const { plugin, target, errors } = await open(t, counter('host', 'v1'), { isolate, stateRejected: 'fresh' })
    await plugin.call('inc')
    install(counter('host', 'refuse'), target)
    const ev = new Promise<ReloadEvent>(resolve => plugin.once('reload', resolve))
    await plugin.reload()
    t.equal(await num(plugin, 'version'), 3)
    t.equal(await num(plugin, 'get'), 0, 'a fresh count')
    t.equal((await ev).state?.imported, false)
    t.equal(errors[0]?.code, 'ERR_STATE_REJECTED')
  })

  t.test(`a failed export refuses the reload; the old version serves on${tag}`, async t => {
    const { plugin, target, errors } = await open(t, counter('host', 'badexport'), { isolate })
    await plugin.call('inc')
    install(counter('host', 'v2'), target)
    const e = await plugin.reload().catch((err: DlhostError) => err) as DlhostError
    t.equal(e.code, 'ERR_STATE_EXPORT')
    t.equal(e.rc, 7, 'with the plugin\'s rc')
    t.equal(errors[0]?.code, 'ERR_STATE_EXPORT')
    t.equal(await num(plugin, 'version'), 4)
    t.equal(await num(plugin, 'get'), 1)
  })

  t.test(`exportState() and initialState: a backup taken and restored${tag}`, async t => {
    const { plugin } = await open(t, counter('native', 'v1'), { isolate })
    for (let i = 0; i < 7; i++) await plugin.call('inc')
    const inFlight = Promise.all(Array.from({ length: 50 }, () => plugin.call('inc')))
    const state = await plugin.exportState()
    await inFlight
    t.equal(state.subarray(0, 4).toString(), 'CNT1')
    t.equal(Number(state.readBigUInt64LE(4)), 57, 'a consistent snapshot: the calls made before it, answered')
    t.equal(await num(plugin, 'get'), 57, 'calls held meanwhile flow on')
    const { plugin: restored } = await open(t, counter('native', 'v2'), { isolate, initialState: state })
    t.equal(await num(restored, 'get'), 57, 'seeded from the backup')
  })
}

t.test('a plugin without state entries reloads as before (a version-1 plugin); its misuse is coded', async t => {
  const { plugin, target } = await open(t, counter('host', 'nostate'))
  await plugin.call('inc')
  const ev = new Promise<ReloadEvent>(resolve => plugin.once('reload', resolve))
  install(counter('host', 'v2'), target)
  await plugin.reload()
  t.equal((await ev).state, undefined, 'no hand-over')
  t.equal(await num(plugin, 'get'), 0)
  const p2 = await open(t, counter('host', 'nostate'))
  await t.rejects(p2.plugin.exportState(), { code: 'ERR_SYMBOL_MISSING' })
  const dir = tmpdir(t)
  const target2 = path.join(dir, 'p.so')
  install(counter('host', 'nostate'), target2)
  await t.rejects(reloadable(target2, null, { watch: false, initialState: Buffer.from('CNT1') }), { code: 'ERR_STATE_REJECTED' })
  await t.rejects(reloadable(target2, null, { watch: false, initialState: 'x' as unknown as Uint8Array }), { code: 'ERR_INVALID_ARG' })
  await t.rejects(reloadable(target2, null, { watch: false, stateRejected: 'keep' as 'fresh' }), { code: 'ERR_INVALID_ARG' })
  t.same(fs.readdirSync(dir).sort(), ['p.so'], 'nothing left behind')
})

t.test('drain strategy: the state is handed over; a refused one comes back with the old build', async t => {
  const { plugin, target, errors } = await open(t, counter('host', 'v1'), { strategy: 'drain' })
  for (let i = 0; i < 3; i++) await plugin.call('inc')
  install(counter('host', 'v2'), target)
  await plugin.reload()
  t.equal(await num(plugin, 'get'), 3)
  install(counter('host', 'refuse'), target)
  const during = Promise.all(Array.from({ length: 20 }, () => plugin.call('inc')))
  await t.rejects(plugin.reload(), { code: 'ERR_STATE_REJECTED' })
  await during
  t.equal(await num(plugin, 'version'), 2, 'the previous build is back')
  t.equal(await num(plugin, 'get'), 23, 'with its state')
  t.equal(errors[0]?.code, 'ERR_STATE_REJECTED')
})

for (const isolate of [false, 'process'] as Isolate[]) {
  t.test(`dlhost_task_cancelled: the plugin sees an abort${isolate === false ? ' and a timeout' : ''}${isolate !== false ? ' (isolated)' : ''}`, async t => {
    const rt = await load(counter('native', 'v1'), null, isolate !== false ? { isolate } : {})
    t.teardown(() => rt.unload())
    const ac = new AbortController()
    const p = rt.call('wait', { signal: ac.signal })
    setTimeout(() => ac.abort(), 30)
    await t.rejects(p, { code: 'ERR_ABORTED' })
    // The plugin answers "cancelled" within a millisecond of seeing it; the
    // answer is dropped, and its count says it saw it.
    let seen = 0
    for (let i = 0; i < 500 && seen < 1; i++) seen = Number((await rt.call('cancels')).toString())
    t.equal(seen, 1, 'seen by the plugin')
    if (isolate === false) {
      await t.rejects(rt.call('wait', { timeoutMs: 30 }), { code: 'ERR_TIMEOUT' })
      for (let i = 0; i < 500 && seen < 2; i++) seen = Number((await rt.call('cancels')).toString())
      t.equal(seen, 2, 'a timeout too')
      t.equal(rt.stats.late, 2, 'both answers dropped and counted')
    }
    const done = await rt.call('get')
    t.equal(done.toString(), '0', 'the runtime serves on')
  })
}

t.test('lua-resty-ffi plugins are untouched by Level 5: no hand-over, a stream of one chunk, calls as before', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-state-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const target = path.join(dir, 'lua.so')
  install(path.join(__dirname, '..', 'examples', 'out', 'libffi_echo.so'), target)
  const plugin = await reloadable(target, null, { watch: false })
  t.teardown(() => plugin.close())
  const ev = new Promise<ReloadEvent>(resolve => plugin.once('reload', resolve))
  await plugin.reload() // the same bytes: nothing to do
  const bytes = fs.readFileSync(target)
  fs.writeFileSync(target + '.tmp', Buffer.concat([bytes, Buffer.from('x')]))
  fs.renameSync(target + '.tmp', target)
  await plugin.reload()
  t.equal((await ev).state, undefined, 'no state step is ever sent to a lua-resty-ffi plugin')
  t.equal((await plugin.call('hello')).toString(), 'hello')
  const chunks: string[] = []
  for await (const c of plugin.stream('whole')) chunks.push(c.toString())
  t.same(chunks, ['whole'])
  await t.rejects(plugin.exportState(), { code: 'ERR_SYMBOL_MISSING' })
})
