// Level 5: messages from plugin threads (dlhost_emit), in process and
// isolated: per-thread order, bounded queues whose refusals are counted,
// backpressure from a slow iterator, the end of a runtime, and a plugin's
// messages tagged with the version that sent them. The fixture is
// test/fixtures/plugins/emitter.c.
import t, { Test } from 'tap'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { Worker } from 'worker_threads'
import { load, reloadable, type Runtime } from '../lib/index'
import { fixture, runNode } from './lib/helpers'

type Isolate = 'process' | undefined
const emitter = (abi: string): string => fixture(`emitter_${abi}.so`)
const open = async (t: Test, abi: string, isolate: Isolate, extra: Record<string, unknown> = {}): Promise<Runtime> => {
  const rt = await load(emitter(abi), `t${Math.random()}`, { ...(isolate !== undefined ? { isolate } : {}), ...extra }) as Runtime
  t.teardown(() => rt.unload())
  return rt
}
const until = async (cond: () => boolean, what: string): Promise<void> => {
  for (let i = 0; i < 20000 && !cond(); i++) await new Promise(resolve => setImmediate(resolve))
  if (!cond()) throw new Error(`never: ${what}`)
}

for (const abi of ['host', 'native']) {
  for (const isolate of [undefined, 'process'] as Isolate[]) {
    const tag = `${abi}${isolate !== undefined ? ', isolated' : ''}`
    t.test(`${tag}: 1 M messages from 4 plugin threads, each delivered in its thread's order or counted as refused`, async t => {
      const rt = await open(t, abi, isolate)
      const next = [0, 0, 0, 0]
      let delivered = 0
      let outOfOrder = 0
      rt.on('message', b => {
        const [th, seq] = b.toString().split(':').map(Number) as [number, number]
        if (seq < (next[th] as number)) outOfOrder++
        next[th] = seq + 1
        delivered++
      })
      const refused = Number((await rt.call('burst:4:250000')).toString())
      await until(() => delivered + refused >= 1000000, 'every message delivered or refused')
      t.equal(delivered + refused, 1000000, 'none lost silently')
      t.equal(outOfOrder, 0, 'each thread\'s messages in its order (refused ones skipped)')
      t.equal(rt.stats.messages, delivered)
      t.equal(rt.stats.messagesRefused, refused, 'the plugin\'s refusals are the runtime\'s count')
      t.ok(delivered >= 65536 || refused === 0, 'at least a queue\'s worth delivered')
    })

    t.test(`${tag}: messages() iterates; a reader that falls behind pauses the flow (refusals, bounded memory); it ends at unload`, async t => {
      const rt = await open(t, abi, isolate)
      const it = rt.messages({ highWaterMark: 8 })
      t.equal((await rt.call('one:hello')).toString(), 'ok')
      t.equal((await it.next()).value?.toString(), 'hello')
      // Nobody reads while 200 k are emitted: the flow pauses at 8 buffered,
      // the native queue fills, and the rest is refused (and counted).
      const refused = Number((await rt.call('burst:1:200000')).toString())
      t.ok(refused > 0, `refused ${refused}`)
      await until(() => rt.stats.messages + refused >= 200001 || rt.stats.messagesRefused === refused, 'settled')
      let read = 0
      let last = -1
      let ordered = true
      const reading = (async () => {
        for await (const m of it) {
          const seq = Number(m.toString().split(':')[1])
          if (seq <= last) ordered = false
          last = seq
          if (++read === 200000 - refused) break
        }
      })()
      await reading
      t.equal(read, 200000 - refused, 'every message not refused reaches the reader, once')
      t.ok(ordered, 'in order')
      const it2 = rt.messages()
      const ended = (async () => { const r = await it2.next(); return r.done })()
      await rt.unload()
      t.equal(await ended, true, 'an iterator ends when the runtime is unloaded')
      t.rejects(async () => await Promise.resolve(rt.messages({ highWaterMark: 0 })), { code: 'ERR_OUT_OF_RANGE' })
    })
  }
}

for (const isolate of [undefined, 'process'] as Isolate[]) {
  t.test(`a message emitted during init reaches a listener attached when load() resolves${isolate !== undefined ? ' (isolated)' : ''}`, async t => {
    // The init event goes out before any message: the listener below is
    // attached in that event's callback, as load() resolves.
    for (let i = 0; i < 20; i++) {
      const rt = await load(emitter('native'), `say:hello ${i}`, isolate !== undefined ? { isolate } : {}) as Runtime
      const it = rt.messages()
      t.equal((await rt.call('one:after')).toString(), 'ok')
      const first = (await it.next()).value?.toString()
      const second = first === `hello ${i}` ? (await it.next()).value?.toString() : undefined
      await rt.unload()
      if (first !== `hello ${i}` || second !== 'after') { t.same([first, second], [`hello ${i}`, 'after'], `load ${i}`); return }
    }
    t.pass('20 loads: the first message always reached the listener')
  })
}

t.test('dlhost_emit after the runtime ended returns DLHOST_ECLOSED (no freed memory touched)', async t => {
  // A pinned private copy: the lingering thread outlives its runtime, so
  // the library must stay mapped.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-msg-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  for (const abi of ['host', 'native']) {
    const lib = path.join(dir, `linger_${abi}.so`)
    fs.copyFileSync(emitter(abi), lib)
    const rt = await load(lib, 'a', { pin: true }) as Runtime
    let ticks = 0
    rt.on('message', () => { ticks++ })
    t.equal((await rt.call('linger')).toString(), 'ok')
    await until(() => ticks > 3, 'ticks')
    await rt.unload()
    const again = await load(lib, 'b', { pin: true }) as Runtime // the same mapping, the same globals
    let state = ''
    for (let i = 0; i < 2000 && state !== 'closed'; i++) {
      state = (await again.call('lingered')).toString()
      if (state !== 'closed') await new Promise(resolve => setTimeout(resolve, 1))
    }
    t.equal(state, 'closed', `${abi}: the thread was told the runtime ended`)
    await again.unload()
  }
})

t.test('a listener keeps the process alive; without one an idle runtime does not', async t => {
  const lib = JSON.stringify(emitter('native'))
  const idle = runNode(`const d = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))}); d.load(${lib}).then(rt => rt.call('one:x'))`, { timeout: 10000 })
  t.equal(idle.status, 0, 'exits by itself')
  const kept = runNode(`const d = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))}); d.load(${lib}).then(rt => { rt.on('message', m => { console.log(m.toString()); rt.unload() }); setTimeout(() => rt.call('one:late'), 50) })`, { timeout: 10000 })
  t.equal(kept.status, 0)
  t.equal(kept.stdout.trim(), 'late', 'alive until the message came and unload() ran')
})

t.test('plugin.on(\'message\') says which version sent it', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-msg-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const target = path.join(dir, 'p.so')
  fs.copyFileSync(emitter('host'), target)
  const plugin = await reloadable(target, null, { watch: false })
  t.teardown(() => plugin.close())
  const got: Array<[string, number]> = []
  plugin.on('message', (b, { seq }) => got.push([b.toString(), seq]))
  await plugin.call('one:first')
  fs.copyFileSync(fixture('emitter_host2.so'), target + '.tmp')
  fs.renameSync(target + '.tmp', target)
  await plugin.reload()
  t.equal((await plugin.call('version')).toString(), '2')
  await plugin.call('one:second')
  await until(() => got.length === 2, 'two messages')
  t.same(got, [['first', 1], ['second', 2]])
})

t.test('a worker terminated while its plugins flood messages and stream: no crash, no hang; the host serves on', async t => {
  for (const isolate of [undefined, 'process'] as Isolate[]) {
    const w = new Worker(`
      const { parentPort } = require('worker_threads')
      const d = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))})
      const opts = ${JSON.stringify(isolate !== undefined ? { isolate } : {})}
      Promise.all([d.load(${JSON.stringify(emitter('native'))}, 'w', opts), d.load(${JSON.stringify(fixture('streamer.so'))}, 'w', opts)]).then(async ([e, s]) => {
        let n = 0
        e.on('message', () => { if (++n === 1000) parentPort.postMessage('flowing') })
        e.call('flood:100000000').catch(() => {})
        for await (const c of s.stream('bytes:${1 << 30}:65536', { highWaterMark: 2 })) { if (c.length === 0) break }
      })`, { eval: true })
    t.equal(await new Promise(resolve => w.once('message', resolve)), 'flowing')
    const code = await w.terminate()
    t.equal(code, 1, 'terminated')
  }
  const rt = await open(t, 'native', undefined)
  t.equal((await rt.call('one:still here')).toString(), 'ok', 'the host process serves on')
})
