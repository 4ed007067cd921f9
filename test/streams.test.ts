// Level 5: streamed answers (dlhost_task_send) in process and isolated: a
// gigabyte in 64 KiB chunks with bounded memory, backpressure, a reader that
// stops early (the plugin sees it), the last chunk, errors, aborts. The
// fixture is test/fixtures/plugins/streamer.c.
import t from 'tap'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { load, reloadable, type Runtime } from '../lib/index'
import { fixture } from './lib/helpers'

type Isolate = 'process' | undefined
const stats = async (rt: Runtime): Promise<{ stopped: number, waits: number }> => {
  const [stopped, waits] = (await rt.call('stats')).toString().split(' ').map(Number) as [number, number]
  return { stopped, waits }
}
const collect = async (it: AsyncIterable<Buffer>): Promise<string[]> => {
  const out: string[] = []
  for await (const c of it) out.push(c.toString())
  return out
}

for (const isolate of [undefined, 'process'] as Isolate[]) {
  const tag = isolate !== undefined ? ' (isolated)' : ''
  t.test(`1 GiB in 64 KiB chunks: every byte, in order, with bounded memory and backpressure${tag}`, async t => {
    const rt = await load(fixture('streamer.so'), null, isolate !== undefined ? { isolate } : {}) as Runtime
    t.teardown(() => rt.unload())
    const total = 1024 * 1024 * 1024
    const rss0 = process.memoryUsage.rss()
    let got = 0
    let bad = 0
    let maxRss = rss0
    let n = 0
    for await (const c of rt.stream(`bytes:${total}:65536`, { highWaterMark: 8 })) {
      // Byte i of the stream is i & 0xff; chunks start at multiples of 64 KiB.
      if (c[0] !== 0 || c[c.length - 1] !== ((c.length - 1) & 0xff) || c.length !== 65536) bad++
      got += c.length
      if ((++n & 255) === 0) maxRss = Math.max(maxRss, process.memoryUsage.rss())
    }
    t.equal(got, total, 'every byte')
    t.equal(bad, 0, 'each chunk whole')
    // Under ASan freed memory sits in its quarantine (256 MiB) before reuse.
    const bound = (process.env.ASAN_OPTIONS !== undefined ? 512 : 256) * 1024 * 1024
    t.ok(maxRss - rss0 < bound, `RSS grew ${((maxRss - rss0) / 1048576).toFixed(0)} MiB of a 1 GiB stream (bounded)`)
    t.ok((await stats(rt)).waits > 0, 'the plugin had to wait for the reader (backpressure)')
  })

  t.test(`a reader that stops early: the plugin sees it, and the runtime serves on${tag}`, async t => {
    const rt = await load(fixture('streamer.so'), 'early', isolate !== undefined ? { isolate } : {}) as Runtime
    t.teardown(() => rt.unload())
    let k = 0
    for await (const c of rt.stream(`bytes:${1 << 30}:65536`)) {
      t.equal(c.length, 65536)
      if (++k === 5) break
    }
    let s = await stats(rt)
    for (let i = 0; i < 2000 && s.stopped < 1; i++) { await new Promise(resolve => setTimeout(resolve, 1)); s = await stats(rt) }
    t.equal(s.stopped, 1, 'break is seen (DLHOST_ECANCELLED)')
    const ac = new AbortController()
    const it = rt.stream(`bytes:${1 << 30}:65536`, { signal: ac.signal })
    await it.next()
    ac.abort()
    await t.rejects(async () => { for (;;) { const r = await it.next(); if (r.done === true) break } }, { code: 'ERR_ABORTED' })
    for (let i = 0; i < 2000 && s.stopped < 2; i++) { await new Promise(resolve => setTimeout(resolve, 1)); s = await stats(rt) }
    t.equal(s.stopped, 2, 'an abort is seen')
    if (isolate === undefined) {
      await t.rejects(collect(rt.stream(`bytes:${1 << 30}:65536`, { timeoutMs: 50, highWaterMark: 1 })), { code: 'ERR_TIMEOUT' })
      for (let i = 0; i < 2000 && s.stopped < 3; i++) { await new Promise(resolve => setTimeout(resolve, 1)); s = await stats(rt) }
      t.equal(s.stopped, 3, 'a timeout is seen')
    }
    t.same(await collect(rt.stream('last:3')), ['c0', 'c1', 'c2', 'end'], 'the answer\'s body is the last chunk')
    t.equal(rt.stats.inFlight, 0, 'no slot left behind')
  })

  t.test(`an answer with rc != 0 makes the reader throw ERR_PLUGIN after the chunks before it; send outside a stream is refused${tag}`, async t => {
    const rt = await load(fixture('streamer.so'), 'errors', isolate !== undefined ? { isolate } : {}) as Runtime
    t.teardown(() => rt.unload())
    const seen: string[] = []
    const e = await (async () => { for await (const c of rt.stream('fail:2')) seen.push(c.toString()) })().catch((err: { code: string, rc: number }) => err) as { code: string, rc: number }
    t.same(seen, ['c0', 'c1'])
    t.equal(e.code, 'ERR_PLUGIN')
    t.equal(e.rc, 5)
    t.equal((await rt.call('plain')).toString(), '4', 'DLHOST_EINVAL for a plain call')
    t.throws(() => rt.stream('x', { highWaterMark: 0 }), { code: 'ERR_OUT_OF_RANGE' })
    t.throws(() => rt.stream('x', { hwm: 1 } as unknown as { highWaterMark: number }), { code: 'ERR_INVALID_ARG' })
  })
}

t.test('a host-driven plugin\'s answer is a stream of one chunk; plugin.stream() follows reloads', async t => {
  const echo = await load(fixture('hard_host.so')) as Runtime
  t.teardown(() => echo.unload())
  t.same(await collect(echo.stream('one')), ['one'])
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-stream-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const target = path.join(dir, 'p.so')
  fs.copyFileSync(fixture('streamer.so'), target)
  const plugin = await reloadable(target, null, { watch: false, strategy: 'drain' })
  t.teardown(() => plugin.close())
  t.same(await collect(plugin.stream('last:2')), ['c0', 'c1', 'end'])
  fs.copyFileSync(fixture('streamer.so'), target + '.tmp')
  fs.appendFileSync(target + '.tmp', Buffer.from('another build')) // new bytes, the same code
  fs.renameSync(target + '.tmp', target)
  const reloading = plugin.reload()
  const during = collect(plugin.stream('last:1')) // held while the old version drains
  await reloading
  t.same(await during, ['c0', 'end'])
  t.equal(plugin.version.seq, 2)
})
