'use strict'
// Two-way plugins (Level 5), in one run:
// - messages per second from one plugin thread into JS (dlhost_emit; the
//   plugin retries a refused message after sched_yield), in process and
//   isolated, beside koffi calling a registered JS callback from a C thread
//   (bench/kflood.c; koffi queues each call to the JS thread);
// - stream throughput (dlhost_task_send, 64 KiB chunks, 256 MiB a round);
// - the reload pause with a 1 MiB state (calls held from the old version's
//   drain through its export and the new one's import), idle and with 64
//   calls in flight.
// The plugins are the test fixtures (test/fixtures/plugins/*.c).
const fs = require('fs')
const os = require('os')
const path = require('path')
const { log, now, median, round3 } = require('../lib/harness')
const { dlhost, root, ROUNDS, QUICK } = require('../lib/config')
const { buildKflood } = require('../lib/build')

const fixture = (name) => path.join(root, 'test', 'fixtures', 'out', name)

/** N messages from one plugin thread: messages per second until the last one arrived. */
async function floodRound (rt, n) {
  let got = 0
  let done
  const all = new Promise(resolve => { done = resolve })
  const on = () => { if (++got === n) done() }
  rt.on('message', on)
  const t0 = now()
  await rt.call(`flood:${n}`)
  await all
  const ms = now() - t0
  rt.off('message', on)
  return n / ms * 1000
}

function koffiFlood () {
  let koffi
  try { koffi = require('koffi') } catch { return null }
  const lib = koffi.load(buildKflood())
  const CB = koffi.proto('void kflood_cb_t(const uint8_t *msg, size_t len)')
  const start = lib.func('int kflood_start(kflood_cb_t *cb, long n)')
  let got = 0
  let want = 0
  let done = () => {}
  const cb = koffi.register(() => { if (++got === want) done() }, koffi.pointer(CB))
  return {
    round: async (n) => {
      got = 0
      want = n
      // koffi's queued callbacks do not keep the loop alive by themselves.
      const keep = setInterval(() => {}, 1000)
      const t0 = now()
      await new Promise(resolve => { done = resolve; start(cb, n) })
      clearInterval(keep)
      return n / (now() - t0) * 1000
    },
    dispose: () => { koffi.unregister(cb); lib.unload() }
  }
}

async function streamRound (rt, bytes) {
  const t0 = now()
  let got = 0
  for await (const c of rt.stream(`bytes:${bytes}:65536`)) got += c.length
  if (got !== bytes) throw new Error(`stream: ${got} of ${bytes} bytes`)
  return bytes / (now() - t0) * 1000
}

async function pauseRounds (depth, swaps) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-state-'))
  const target = path.join(dir, 'counter.so')
  const put = (v) => { fs.copyFileSync(fixture(`counter_host_${v}.so`), target + '.tmp'); fs.renameSync(target + '.tmp', target) }
  put('v1')
  const plugin = await dlhost.reloadable(target, 'pad:1048564', { watch: false, strategy: 'shadow' })
  const events = []
  plugin.on('reload', ev => events.push(ev))
  let stop = false
  let inFlight = 0
  let failed = 0
  const issue = () => { inFlight++; plugin.call('inc').catch(() => { failed++ }).finally(() => { inFlight--; if (!stop) issue() }) }
  for (let i = 0; i < depth; i++) issue()
  try {
    for (let i = 0; i < swaps; i++) {
      put(i % 2 === 0 ? 'v2' : 'v1')
      await plugin.reload()
    }
  } finally {
    stop = true
    while (inFlight > 0) await new Promise(resolve => setImmediate(resolve))
    await plugin.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const st = events.map(e => e.state)
  return {
    inFlight: depth,
    swaps,
    stateBytes: st[0]?.bytes,
    pauseMsMedian: round3(median(st.map(s => s.pauseMs))),
    drainMsMedian: round3(median(st.map(s => s.drainMs))),
    handoverMsMedian: round3(median(st.map(s => s.pauseMs - s.drainMs))),
    reloadMsMedian: round3(median(events.map(e => e.ms))),
    failedCalls: failed
  }
}

async function benchTwoWay () {
  log('two-way plugins: messages/s from one plugin thread, stream GB/s, reload pause with a 1 MiB state…')
  const n = QUICK ? 500000 : 2000000
  const inproc = await dlhost.load(fixture('emitter_native.so'), 'bench messages')
  const iso = await dlhost.load(fixture('emitter_native.so'), 'bench messages isolated', { isolate: 'process' })
  const kf = koffiFlood()
  const kn = QUICK ? 20000 : 50000
  const msg = { 'dlhost, in process': [], 'dlhost, isolated': [], 'koffi registered callback from a C thread (peer)': [] }
  for (let r = 0; r < ROUNDS; r++) {
    msg['dlhost, in process'].push(await floodRound(inproc, n))
    msg['dlhost, isolated'].push(await floodRound(iso, n))
    if (kf) msg['koffi registered callback from a C thread (peer)'].push(await kf.round(kn))
  }
  kf?.dispose()
  await inproc.unload()
  await iso.unload()
  const kfRounds = msg['koffi registered callback from a C thread (peer)']
  const messages = Object.entries(msg).filter(([, v]) => v.length > 0).map(([name, v]) => ({
    name,
    messagesPerSec: Math.round(median(v)),
    roundMessagesPerSec: v.map(Math.round),
    vsKoffi: kfRounds.length > 0 ? round3(median(v.map((x, i) => x / kfRounds[i]))) : null
  }))

  const bytes = (QUICK ? 128 : 256) * 1024 * 1024
  const s1 = await dlhost.load(fixture('streamer.so'), 'bench stream')
  const s2 = await dlhost.load(fixture('streamer.so'), 'bench stream isolated', { isolate: 'process' })
  const st = { 'dlhost, in process': [], 'dlhost, isolated': [] }
  for (let r = 0; r < ROUNDS; r++) {
    st['dlhost, in process'].push(await streamRound(s1, bytes))
    st['dlhost, isolated'].push(await streamRound(s2, bytes))
  }
  await s1.unload()
  await s2.unload()
  const streams = Object.entries(st).map(([name, v]) => ({ name, chunkBytes: 65536, bytesPerRound: bytes, gbPerSec: round3(median(v) / 1e9), roundGbPerSec: v.map(x => round3(x / 1e9)) }))

  const swaps = QUICK ? 10 : 30
  const pause = [await pauseRounds(0, swaps), await pauseRounds(64, swaps)]
  return { messages, streams, pause }
}

module.exports = { benchTwoWay }
