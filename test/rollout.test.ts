// Safe rollout: per-version metrics and canary reloads that promote or roll
// back on their own (docs/rollout.md), in process and isolated. The
// fixture is test/fixtures/plugins/rollout.c in good, failing and slow builds.
import t, { Test } from 'tap'
import diagnostics from 'diagnostics_channel'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { reloadable, DlhostError, type Plugin, type RolloutEvent } from '../lib/index'
import { fixture, inMaps } from './lib/helpers'

type Isolate = 'process' | false
const build = (name: string): string => fixture(`rollout_${name}.so`)

async function open (t: Test, first: string, opts: Record<string, unknown>): Promise<{ plugin: Plugin, put: (name: string) => void, errors: DlhostError[] }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-rollout-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const target = path.join(dir, 'p.so')
  const put = (name: string): void => { fs.copyFileSync(build(name), target + '.tmp'); fs.renameSync(target + '.tmp', target) }
  put(first)
  const plugin = await reloadable(target, null, { watch: false, ...opts })
  t.teardown(() => plugin.close())
  const errors: DlhostError[] = []
  plugin.on('error', e => errors.push(e))
  return { plugin, put, errors }
}

/** `depth` callers in a loop until stop(); every call settles, once. */
function load (plugin: Plugin, depth: number, key?: (i: number) => string): { stop: () => Promise<{ issued: number, ok: number, failed: number, codes: Set<string> }> } {
  let stopped = false
  let issued = 0
  let ok = 0
  let failed = 0
  const codes = new Set<string>()
  const loops = Array.from({ length: depth }, async (_, i) => {
    while (!stopped) {
      issued++
      try {
        await plugin.call('x', key !== undefined ? { key: key(i) } : undefined)
        ok++
      } catch (err) {
        failed++
        codes.add((err as DlhostError).code)
      }
    }
  })
  return { stop: async () => { stopped = true; await Promise.all(loops); return { issued, ok, failed, codes } } }
}

const once = <T> (p: Plugin, ev: 'promote' | 'rollback'): Promise<T> => new Promise(resolve => p.once(ev, (x: unknown) => resolve(x as T)))

for (const isolate of [false, 'process'] as Isolate[]) {
  const tag = isolate !== false ? ' (isolated)' : ''

  t.test(`a build failing 10% of calls is rolled back under load (256 in flight); no call lost; the event says why${tag}`, async t => {
    for (const retry of [false, true]) {
      const { plugin, put, errors } = await open(t, 'v1', { isolate, rollout: { canary: 0.1, minCalls: 2000, retry } })
      const l = load(plugin, 256)
      put('flaky')
      const ev = once<RolloutEvent>(plugin, 'rollback')
      await t.rejects(plugin.reload(), { code: 'ERR_ROLLED_BACK' })
      const r = await l.stop()
      const e = await ev
      t.equal(r.ok + r.failed, r.issued, `retry ${retry}: every call settled once`)
      t.match(e.reason, /error rate .* above maxErrorRate/)
      t.equal(e.decidedBy, 'metrics')
      t.ok(e.canary.calls >= 2000 && e.canary.errors.plugin > 0, `retry ${retry}: the canary's metrics show it (${e.canary.errors.plugin} of ${e.canary.calls})`)
      t.ok(e.canary.errorRate > 0.05 && e.stable.errorRate === 0)
      t.ok(e.decisionMs < 100, `decided in ${e.decisionMs} ms`)
      if (retry) t.equal(r.failed, 0, 'retry: users see no failure')
      else {
        t.ok(r.failed > 0 && [...r.codes].every(c => c === 'ERR_PLUGIN'), `without retry the canary's failures reach users (${r.failed})`)
      }
      t.equal(plugin.version.seq, 1, 'the stable version serves')
      t.equal(plugin.canary, null)
      t.same(errors, [], "a rollback is a 'rollback' event, not an 'error'")
      await plugin.close()
    }
  })

  t.test(`a good build is promoted after minCalls; the old version leaves${tag}`, async t => {
    const { plugin, put } = await open(t, 'v1', { isolate, rollout: { canary: 0.2, minCalls: 1000 } })
    const old = plugin.version.copy
    const l = load(plugin, 16)
    put('v2')
    const ev = once<RolloutEvent>(plugin, 'promote')
    const drained = new Promise(resolve => plugin.once('drained', resolve))
    await plugin.reload()
    const e = await ev
    await l.stop()
    await drained
    t.equal(plugin.version.seq, 2)
    t.match(e.reason, /^passed/)
    t.ok(e.canary.calls >= 1000)
    t.equal((await plugin.call('x')).toString(), 'v2:x')
    if (isolate === false) t.notOk(inMaps(old), 'the old version is unmapped')
    t.same(plugin.versions.map(v => v.seq), [2])
  })

  t.test(`sticky keys land on one version for the whole canary period${tag}`, async t => {
    const { plugin, put } = await open(t, 'v1', { isolate, rollout: { canary: 0.3, minCalls: 1e9, maxMs: 60000 } })
    put('v2')
    const reloading = plugin.reload()
    while (plugin.canary === null) await new Promise(resolve => setImmediate(resolve))
    const seen = new Map<string, Set<number>>()
    for (let round = 0; round < 20; round++) {
      await Promise.all(Array.from({ length: 40 }, async (_, i) => {
        const key = `user${i}`
        const r = await plugin.callVersioned('x', { key })
        if (!seen.has(key)) seen.set(key, new Set())
        seen.get(key)?.add(r.seq)
      }))
    }
    t.ok([...seen.values()].every(s => s.size === 1), 'each key: one version')
    const canaryKeys = [...seen.values()].filter(s => s.has(2)).length
    t.ok(canaryKeys > 0 && canaryKeys < 40, `${canaryKeys} of 40 keys on the canary`)
    t.equal(plugin.canary?.version.seq, 2)
    await plugin.promote()
    await reloading
    t.equal(plugin.version.seq, 2)
    await t.rejects(plugin.promote(), { code: 'ERR_NO_CANARY' })
  })

  t.test(`a rolled-back build is not tried again until the file changes${tag}`, async t => {
    const { plugin, put } = await open(t, 'v1', { isolate, rollout: { canary: 0.5, minCalls: 1e9 } })
    put('v2')
    const first = plugin.reload()
    while (plugin.canary === null) await new Promise(resolve => setImmediate(resolve))
    await plugin.rollback()
    await t.rejects(first, { code: 'ERR_ROLLED_BACK' })
    put('v2') // the same bytes, renamed in again
    await t.rejects(plugin.reload(), { code: 'ERR_ROLLED_BACK' })
    t.equal(plugin.canary, null, 'not tried')
    put('v3') // a changed build
    const second = plugin.reload()
    while (plugin.canary === null) await new Promise(resolve => setImmediate(resolve))
    t.equal((await plugin.callVersioned('x', { key: 'k' })).seq > 0, true)
    await plugin.promote()
    await second
    t.equal((await plugin.call('x')).toString(), 'v3:x')
  })
}

for (const isolate of [false, 'process'] as Isolate[]) {
  t.test(`a build ten times slower is rolled back for latency${isolate !== false ? ' (isolated: service times from the child)' : ''}`, async t => {
    // 25,000 against 250,000 units of CPU work a call (about 6 against 60
    // ms here). On a busy machine a call can wait out other threads' time
    // slices (tens of ms under a loaded test run) whatever its length, and
    // the p99 of a few dozen sampled calls is their worst: a 3x build was
    // once measured at 33.5 ms against a stable 31.5 ms that way. At 10x
    // that tail cannot hide the difference. The bar is 1.5x: the rule is
    // what is tested, not this VM's scheduler.
    const { plugin, put } = await open(t, 'base', { isolate, rollout: { canary: 0.5, minCalls: 60, maxLatencyRatio: 1.5 } })
    const l = load(plugin, 4)
    for (let i = 0; i < 10; i++) await plugin.call('warm')
    put('slow')
    const ev = new Promise<RolloutEvent | string>(resolve => { plugin.once('rollback', resolve); plugin.once('promote', e => resolve(`promoted: ${e.reason}`)) })
    await t.rejects(plugin.reload(), { code: 'ERR_ROLLED_BACK' })
    await l.stop()
    const e = await ev
    if (typeof e === 'string') { t.fail(e); return }
    t.match(e.reason, /p99 .* above maxLatencyRatio 1.5/)
    t.ok(e.canary.service.p99Ms > 1.5 * e.stable.service.p99Ms, `canary service p99 ${e.canary.service.p99Ms} ms, stable ${e.stable.service.p99Ms} ms`)
  })
}

t.test('maxMs decides with the calls there are; rollout events reach diagnostics_channel; metrics() per version', async t => {
  const events: Array<{ kind: string }> = []
  const sub = (m: unknown): void => { events.push(m as { kind: string }) }
  diagnostics.subscribe('dlhost:rollout', sub)
  t.teardown(() => diagnostics.unsubscribe('dlhost:rollout', sub))
  const { plugin, put } = await open(t, 'v1', { rollout: { canary: 0.5, minCalls: 1e9, maxMs: 1500 } })
  for (let i = 0; i < 50; i++) await plugin.call('x')
  put('v2')
  const ev = once<RolloutEvent>(plugin, 'promote')
  const reloading = plugin.reload()
  while (plugin.canary === null) await new Promise(resolve => setImmediate(resolve))
  for (let i = 0; i < 40; i++) await plugin.call('y')
  const m = plugin.metrics()
  t.same(m.map(x => x.role).sort(), ['canary', 'stable'])
  const stable = m.find(x => x.role === 'stable')
  t.ok(stable !== undefined && stable.life.calls >= 70 && stable.life.latency.count === stable.life.calls, 'life: every call, with its latency')
  t.ok(stable !== undefined && stable.life.latency.p50Ms > 0 && stable.life.latency.p99Ms >= stable.life.latency.p50Ms)
  await reloading
  t.equal((await ev).decidedBy, 'maxMs')
  t.same(events.map(e => e.kind), ['canary', 'promote'])
  const off = await open(t, 'v1', { metrics: false })
  await off.plugin.call('x')
  t.equal(off.plugin.metrics()[0]?.life.latency.count, 0, 'metrics: false records no latency')
  t.equal(off.plugin.metrics()[0]?.life.calls, 1, 'counts are kept all the same')
})

t.test('where a canary cannot run, rollout is a coded error, never a silent full swap', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-rollout-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const at = (name: string, src: string): string => { const p = path.join(dir, name); fs.copyFileSync(src, p); return p }
  const v1 = at('v1.so', build('v1'))
  await t.rejects(reloadable(v1, null, { watch: false, strategy: 'drain', rollout: {} }), { code: 'ERR_CANNOT_COEXIST' })
  await t.rejects(reloadable(at('nodelete.so', fixture('nodelete.so')), null, { watch: false, isolate: false, strategy: 'shadow', rollout: {}, entry: 'host' }), { code: /ERR_CANNOT_COEXIST|ERR_SYMBOL_MISSING/ })
  await t.rejects(reloadable(at('counter.so', fixture('counter_host_v1.so')), null, { watch: false, rollout: {} }), { code: 'ERR_INVALID_ARG' })
  await t.rejects(reloadable(v1, null, { watch: false, rollout: { canary: 1 } }), { code: 'ERR_OUT_OF_RANGE' })
  await t.rejects(reloadable(v1, null, { watch: false, rollout: { canery: 0.1 } as unknown as { canary: number } }), { code: 'ERR_INVALID_ARG' })
  await t.rejects(reloadable(v1, null, { watch: false, rollout: { retry: 'yes' } as unknown as { retry: boolean } }), { code: 'ERR_INVALID_ARG_TYPE' })
  const p = await reloadable(v1, null, { watch: false })
  t.teardown(() => p.close())
  await t.rejects(p.rollback(), { code: 'ERR_NO_CANARY' })
  await t.rejects(p.call('x', { key: {} as unknown as string }), { code: 'ERR_INVALID_ARG_TYPE' })
  t.same(fs.readdirSync(dir).sort(), ['counter.so', 'nodelete.so', 'v1.so'], 'nothing left behind')
})

t.test('close() during a canary: the reload rejects ERR_CLOSED, every version leaves', async t => {
  const { plugin, put } = await open(t, 'v1', { rollout: { canary: 0.5, minCalls: 1e9 } })
  put('v2')
  const reloading = plugin.reload()
  while (plugin.canary === null) await new Promise(resolve => setImmediate(resolve))
  const copies = plugin.versions.map(v => v.copy)
  t.equal(copies.length, 2)
  await plugin.close()
  await t.rejects(reloading, { code: 'ERR_CLOSED' })
  t.ok(copies.every(c => !inMaps(c) && !fs.existsSync(c)), 'both unmapped and removed')
})
