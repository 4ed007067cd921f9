'use strict'
// Memory over a long life: RSS and external memory after many load/unload
// cycles, reloads and calls, measured after a warm-up and a gc, so that what
// is left is drift, not the allocator's first growth.
const fs = require('fs')
const os = require('os')
const path = require('path')
const { log, round3 } = require('../lib/harness')
const { dlhost, QUICK, LIBS, REQ } = require('../lib/config')
const { install } = require('../lib/build')

const MB = 1024 * 1024
function sample () {
  if (global.gc) { global.gc(); global.gc() }
  const m = process.memoryUsage()
  return { rssMb: m.rss / MB, heapMb: m.heapUsed / MB, externalMb: m.external / MB }
}
function drift (a, b) {
  return { rssMb: round3(b.rssMb - a.rssMb), heapMb: round3(b.heapMb - a.heapMb), externalMb: round3(b.externalMb - a.externalMb) }
}

async function benchMemory (variants) {
  log(`memory drift (${global.gc ? 'with' : 'without'} gc; node --expose-gc for exact figures)…`)
  const out = { gc: Boolean(global.gc) }
  const lib = LIBS.host
  const cycles = QUICK ? 1000 : 10000
  const warm = Math.floor(cycles / 10)
  const cycle = async (i) => {
    const rt = await dlhost.load(lib, `mem ${i}`, { pin: false })
    await rt.call(REQ)
    await rt.unload()
  }
  for (let i = 0; i < warm; i++) await cycle(i)
  let a = sample()
  for (let i = warm; i < cycles; i++) await cycle(i)
  out.loadUnload = { cycles: cycles - warm, ...drift(a, sample()) }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-'))
  try {
    const target = path.join(dir, 'plugin.so')
    install(variants[0].path, target)
    const plugin = await dlhost.reloadable(target, null, { watch: false, strategy: 'shadow' })
    const reloads = QUICK ? 150 : 2000
    let cur = 0
    const reload = async () => { install(variants[cur ^= 1].path, target); await plugin.reload(); await plugin.call(REQ) }
    // glibc's per-thread arenas grow for the first few thousand reloads (each
    // version has an owner and a poll thread), then hold: warm up as long.
    for (let i = 0; i < reloads; i++) await reload()
    a = sample()
    for (let i = 0; i < reloads; i++) await reload()
    out.reloads = { reloads, ...drift(a, sample()) }
    await plugin.close()
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }

  // RSS per loaded runtime (its slots, request ring, poll thread's stack as
  // touched) and per call in flight (its slot and promise), after a gc.
  const N_RT = 50
  a = sample()
  const many = []
  for (let i = 0; i < N_RT; i++) many.push(await dlhost.load(lib, `mem rss ${i}`, { pin: false }))
  for (const r of many) await r.call(REQ)
  out.perRuntime = { runtimes: N_RT, rssKb: round3(((sample().rssMb - a.rssMb) * 1024) / N_RT) }
  for (const r of many) await r.unload()

  const rt = await dlhost.load(lib, 'mem calls')
  {
    const N_CALLS = 50000
    const warmAll = []
    for (let i = 0; i < N_CALLS; i++) warmAll.push(rt.call(REQ)) // grows the slot chunks once
    await Promise.all(warmAll)
    const b = sample()
    const ps = []
    for (let i = 0; i < N_CALLS; i++) ps.push(rt.call(REQ))
    const during = process.memoryUsage().rss / MB // no gc: the calls are still in flight
    await Promise.all(ps)
    out.perCallInFlight = { calls: N_CALLS, rssBytes: round3(((during - b.rssMb) * MB) / N_CALLS) }
  }
  const calls = QUICK ? 100000 : 1000000
  const batch = async (n) => { const ps = []; for (let i = 0; i < n; i++) ps.push(rt.call(REQ)); await Promise.all(ps) }
  for (let i = 0; i < calls / 10; i += 1000) await batch(1000)
  a = sample()
  for (let i = 0; i < calls; i += 1000) await batch(1000)
  out.calls = { calls, ...drift(a, sample()) }
  await rt.unload()
  return out
}

module.exports = { benchMemory }
