// callBatch(): many requests, one promise (docs/batch.md). Ordering, per-item
// errors, maxQueue, abort, unload, in process and isolated, and through a
// Plugin. The fixtures are counter (test/fixtures/plugins/counter.c: "inc"
// counts, anything unknown answers rc 1) and hard's echo.
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { load, reloadable, DlhostError, type Runtime } from '../lib/index'
import { copyOf, fixture } from './lib/helpers'

type Isolate = 'process' | undefined
const open = async (t: Tap, lib: string, isolate: Isolate, extra: Record<string, unknown> = {}): Promise<Runtime> => {
  const rt = await load(lib, `batch ${Math.random()}`, { ...(isolate !== undefined ? { isolate } : {}), ...extra }) as Runtime
  t.teardown(() => rt.unload())
  return rt
}
type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

for (const isolate of [undefined, 'process'] as Isolate[]) {
  const tag = isolate !== undefined ? ' (isolated)' : ''
  t.test(`results in order, as the plugin saw them; one bad item fails alone${tag}`, async t => {
    for (const abi of ['host', 'native']) {
      const rt = await open(t, fixture(`counter_${abi}_v1.so`), isolate)
      const reqs = Array.from({ length: 300 }, (_, i) => i === 7 || i === 250 ? 'nonsense' : 'inc')
      const out = await rt.callBatch(reqs)
      t.equal(out.length, 300)
      t.ok(out[7] instanceof DlhostError && out[7].code === 'ERR_PLUGIN' && out[7].rc === 1, `${abi}: the bad item is its own error`)
      t.ok(out[250] instanceof DlhostError)
      const counts = out.filter((r): r is Buffer => !(r instanceof DlhostError)).map(b => Number(b.toString()))
      t.same(counts, Array.from({ length: 298 }, (_, i) => i + 1), `${abi}: the plugin took them in order`)
      t.equal(rt.stats.inFlight, 0, 'no slot left')
    }
  })

  t.test(`big and small, strings and bytes, empty; bad arguments are coded${tag}`, async t => {
    const rt = await open(t, fixture('hard_host.so'), isolate)
    const big = Buffer.alloc(200000, 0x41)
    const out = await rt.callBatch(['small', big, new Uint8Array([1, 2, 3]), ''])
    t.equal((out[0] as Buffer).toString(), 'small')
    t.ok((out[1] as Buffer).equals(big))
    t.same([...(out[2] as Buffer)], [1, 2, 3])
    t.same(await rt.callBatch([]), [])
    await t.rejects(rt.callBatch('x' as unknown as string[]), { code: 'ERR_INVALID_ARG_TYPE' })
    await t.rejects(rt.callBatch(['ok', 42 as unknown as string]), { code: 'ERR_INVALID_ARG_TYPE' })
    t.equal(rt.stats.inFlight, 0, 'a refused batch takes nothing')
  })

  t.test(`a batch that does not fit under maxQueue is refused whole${tag}`, async t => {
    const rt = await open(t, fixture('hard_host.so'), isolate, { maxQueue: 100 })
    await t.rejects(rt.callBatch(Array.from({ length: 101 }, () => 'x')), { code: 'ERR_QUEUE_FULL' })
    t.equal(rt.stats.inFlight, 0, 'nothing sent')
    t.equal((await rt.callBatch(Array.from({ length: 100 }, () => 'x'))).length, 100)
  })

  t.test(`unload: a batch made before it is answered whole; after it, ERR_RUNTIME_UNLOADED${tag}`, async t => {
    const rt = await load(fixture('counter_native_v1.so'), 'unload batch', isolate !== undefined ? { isolate } : {}) as Runtime
    const p = rt.callBatch(Array.from({ length: 500 }, () => 'inc'))
    const gone = rt.unload()
    const out = await p
    t.ok(out.every(r => r instanceof Buffer), 'every item answered')
    await gone
    await t.rejects(rt.callBatch(['inc']), { code: 'ERR_RUNTIME_UNLOADED' })
  })
}

t.test('abort and timeout give up on the whole batch; the plugin sees it; the runtime serves on', async t => {
  const rt = await open(t, fixture('counter_native_v1.so'), undefined)
  const ac = new AbortController()
  const p = rt.callBatch(['wait', 'inc'], { signal: ac.signal })
  setTimeout(() => ac.abort(), 30)
  await t.rejects(p, { code: 'ERR_ABORTED' })
  let seen = 0
  for (let i = 0; i < 500 && seen < 1; i++) seen = Number((await rt.call('cancels')).toString())
  t.equal(seen, 1, 'the waiting item saw its cancellation')
  await t.rejects(rt.callBatch(['wait'], { timeoutMs: 30 }), { code: 'ERR_TIMEOUT' })
  const aborted = new AbortController()
  aborted.abort()
  await t.rejects(rt.callBatch(['inc'], { signal: aborted.signal }), { code: 'ERR_ABORTED' })
  t.equal((await rt.call('get')).toString(), '1', 'the batch\'s other item ran')
  for (let i = 0; i < 500 && rt.stats.inFlight > 0; i++) await new Promise(resolve => setTimeout(resolve, 2))
  t.equal(rt.stats.inFlight, 0)
})

t.test('plugin.callBatch() follows reloads and counts per item', async t => {
  const target = path.join(t.testdir(), 'p.so')
  fs.copyFileSync(fixture('rollout_v1.so'), target)
  const plugin = await reloadable(target, null, { watch: false })
  t.teardown(() => plugin.close())
  const out = await plugin.callBatch(['a', 'b'])
  t.same(out.map(b => (b as Buffer).toString()), ['v1:a', 'v1:b'])
  fs.copyFileSync(fixture('rollout_v2.so'), target + '.tmp')
  fs.renameSync(target + '.tmp', target)
  await plugin.reload()
  t.same((await plugin.callBatch(['c'])).map(b => (b as Buffer).toString()), ['v2:c'])
  t.equal(plugin.metrics().find(m => m.role === 'serving')?.life.calls, 1, 'the serving version counted its item')
})

t.test('a batch keeps its place among calls made before and after it', async t => {
  const rt = await open(t, fixture('counter_host_v1.so'), undefined)
  const before = [rt.call('inc'), rt.call('inc'), rt.call('inc')] // staged, not yet sent
  const batch = rt.callBatch(Array.from({ length: 5 }, () => 'inc'))
  const after = rt.call('inc')
  t.same((await Promise.all(before)).map(Number), [1, 2, 3])
  t.same((await batch).map(Number), [4, 5, 6, 7, 8])
  t.equal(Number(await after), 9)
})

t.test('many batches in flight at once, of every size; their handles are reused', async t => {
  const rt = await open(t, fixture('hard_host.so'), undefined)
  let items = 0
  for (let round = 0; round < 3; round++) {
    const sizes = Array.from({ length: 60 }, (_, i) => 1 + ((i * 37 + round) % 97))
    items += sizes.reduce((a, n) => a + n, 0)
    const outs = await Promise.all(sizes.map((n, b) => rt.callBatch(Array.from({ length: n }, (_, i) => `${round}.${b}.${i}`))))
    outs.forEach((out, b) => {
      if (!out.every((r, i) => r instanceof Buffer && r.toString() === `${round}.${b}.${i}`)) t.fail(`batch ${b} of round ${round}: wrong results`)
    })
  }
  t.equal(rt.stats.inFlight, 0, 'no slot left')
  t.equal(rt.stats.completed, items, 'every item counted once')
})

t.test('a request getter that makes another batch meanwhile: each gets its own results', async t => {
  const rt = await open(t, fixture('hard_host.so'), undefined)
  let inner: Promise<Array<Buffer | DlhostError>> | undefined
  const reqs = ['a', 'b', 'c']
  Object.defineProperty(reqs, 1, { get: () => { inner ??= rt.callBatch(['x', 'y']); return 'b' } })
  const out = await rt.callBatch(reqs)
  t.same(out.map(String), ['a', 'b', 'c'])
  t.same((await inner)?.map(String), ['x', 'y'])
  // A bad item after good ones: nothing is sent, nothing is kept.
  await t.rejects(rt.callBatch(['a', 'b', {} as unknown as string]), { code: 'ERR_INVALID_ARG_TYPE' })
  t.equal(rt.stats.inFlight, 0)
})

t.test('a batch item its plugin never answers is aborted when its threads exit; the rest are answered', async t => {
  const rt = await load(copyOf(fixture('noanswer.so'), t.testdir()), 'batch', { pin: false }) as Runtime
  const p = rt.callBatch(['one', 'drop', 'three'])
  t.equal((await rt.call('after')).toString(), 'after')
  // Answered items wait for their batch: its slots go back together.
  t.equal(rt.stats.inFlight, 3, 'the batch is in flight, whole')
  await rt.unload()
  const out = await p
  t.equal(String(out[0]), 'one')
  t.ok(out[1] instanceof DlhostError && out[1].code === 'ERR_ABORTED', 'the dropped item: ERR_ABORTED')
  t.equal(String(out[2]), 'three')
  t.match(rt.stats, { inFlight: 0, failed: 1 })
})
