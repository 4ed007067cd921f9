'use strict'
// Reload latency (shadow / drain, reload() and watched) and its breakdown.
const crypto = require('crypto')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { install } = require('../lib/build')
const { log, now, sleep, quantile, median, summarize, round3 } = require('../lib/harness')
const { dlhost, CopyStore, elf, binding, SWAPS, WATCH_SETTLE_MS, REQ } = require('../lib/config')

// 4. reload latency + breakdown
async function benchReload (variants) {
  log('reload latency (shadow / drain) and breakdown…')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-'))
  const out = { swaps: SWAPS, soBytes: fs.statSync(variants[0].path).size, strategies: {}, breakdown: {} }
  try {
    // 'shadow, maxQueue 1024': same, with a smaller request ring per version.
    // The cases are interleaved swap by swap (as the other sections
    // interleave their rounds): measured one after the other, the first case
    // paid for the JIT warming up the reload path and looked ~0.4 ms slower.
    const cases = [['shadow', 'shadow', {}], ['drain', 'drain', {}], ['shadow, maxQueue 1024', 'shadow', { maxQueue: 1024 }]]
    const runs = []
    for (const [label, strategy, extra] of cases) {
      const target = path.join(dir, `plugin-${strategy}-${Object.keys(extra).length}.so`)
      install(variants[0].path, target)
      const plugin = await dlhost.reloadable(target, null, { watch: false, strategy, ...extra })
      const run = { label, strategy, target, plugin, events: [], reloadMs: [], firstCallUs: [], retireMs: [], cur: 0 }
      plugin.on('reload', ev => run.events.push(ev.ms))
      runs.push(run)
    }
    for (let i = -5; i < SWAPS; i++) { // five warm-up rounds (JIT)
      for (const run of runs) {
        const { plugin, strategy, target } = run
        run.cur ^= 1
        install(variants[run.cur].path, target)
        const drained = new Promise(resolve => plugin.once('drained', resolve))
        const t0 = now()
        await plugin.reload()
        const t1 = now()
        const v = (await plugin.call('version')).toString()
        const t2 = now()
        if (v !== variants[run.cur].version) throw new Error(`${strategy}: expected version ${variants[run.cur].version}, got ${v}`)
        await Promise.race([drained, sleep(2000)])
        const t3 = now()
        if (i >= 0) {
          run.reloadMs.push(t1 - t0); run.firstCallUs.push((t2 - t1) * 1000); run.retireMs.push(strategy === 'shadow' ? t3 - t1 : 0)
        } else run.events.length = 0
      }
    }
    for (const { label, strategy, plugin, events, reloadMs, firstCallUs, retireMs } of runs) {
      await plugin.close()
      const s = summarize(Float64Array.from(reloadMs))
      out.strategies[label] = {
        medianMs: round3(s.median),
        p90Ms: round3(quantile(Float64Array.from(reloadMs).sort(), 0.9)),
        maxMs: round3(s.max),
        minMs: round3(s.min),
        eventMedianMs: round3(median(events)),
        firstCallUs: round3(median(firstCallUs)),
        retireMs: strategy === 'shadow' ? round3(median(retireMs)) : null
      }
    }

    // ---- watched: the file is replaced, the watcher sees it settle, the
    // reload event says how long from "settled" to "new version serving"
    // (the copy was prepared while the file settled, see docs/reload.md).
    const keepAlive = setInterval(() => {}, 1000) // watchers and their timers are unref'd
    try {
      const wcases = [['shadow', 'shadow', 'load'], ['shadow, prepare: copy', 'shadow', 'copy'], ['shadow, prepare: off', 'shadow', 'off'], ['drain', 'drain', 'load']]
      const wruns = []
      for (const [label, strategy, prepare] of wcases) {
        const target = path.join(dir, `watched-${strategy}-${prepare}.so`)
        install(variants[0].path, target)
        const plugin = await dlhost.reloadable(target, null, { strategy, prepare, settleMs: WATCH_SETTLE_MS })
        wruns.push({ label, strategy, target, plugin, ms: [], prepared: 0, firstCallUs: [], cur: 0 })
      }
      for (let i = -3; i < SWAPS; i++) {
        for (const run of wruns) {
          const { plugin, strategy, target } = run
          run.cur ^= 1
          const reloaded = new Promise(resolve => plugin.once('reload', resolve))
          const drained = strategy === 'shadow' ? new Promise(resolve => plugin.once('drained', resolve)) : null
          install(variants[run.cur].path, target)
          const ev = await Promise.race([reloaded, sleep(5000).then(() => { throw new Error(`${run.label}: no reload event`) })])
          const t1 = now()
          const v = (await plugin.call('version')).toString()
          const t2 = now()
          if (v !== variants[run.cur].version) throw new Error(`${run.label}: expected version ${variants[run.cur].version}, got ${v}`)
          if (drained) await Promise.race([drained, sleep(2000)])
          if (i >= 0) {
            run.ms.push(ev.ms)
            if (ev.prepared) run.prepared++
            run.firstCallUs.push((t2 - t1) * 1000)
          }
        }
      }
      out.watched = { settleMs: WATCH_SETTLE_MS, cases: {} }
      for (const run of wruns) {
        await run.plugin.close()
        const s = summarize(Float64Array.from(run.ms))
        out.watched.cases[run.label] = {
          medianMs: round3(s.median),
          p90Ms: round3(quantile(Float64Array.from(run.ms).sort(), 0.9)),
          minMs: round3(s.min),
          maxMs: round3(s.max),
          prepared: `${run.prepared}/${run.ms.length}`,
          firstCallUs: round3(median(run.firstCallUs))
        }
      }
    } finally {
      clearInterval(keepAlive)
    }

    // ---- breakdown, timed from outside, same file size
    const N = SWAPS
    const src = path.join(dir, 'src.so')
    install(variants[0].path, src)
    const store = await CopyStore.create()
    const b = {}
    try {
      // snapshot (read + sha256 + write + chmod + fsync + read back + verify)
      const snaps = []
      const snapMs = []
      for (let i = 0; i < N; i++) {
        install(variants[i & 1].path, src)
        const t0 = now()
        snaps.push(await store.snapshot(src))
        snapMs.push(now() - t0)
      }
      b.snapshotMs = round3(median(snapMs))
      // the snapshot's steps, replicated with the same (synchronous, as for
      // any file up to 4 MiB) fs calls
      const steps = { readMs: [], sha256Ms: [], writeMs: [], fsyncMs: [], verifyMs: [] }
      for (let i = 0; i < N; i++) {
        let t = now()
        const fd = fs.openSync(src, 'r')
        const st0 = fs.fstatSync(fd); const bytes = Buffer.allocUnsafe(st0.size + 1)
        const n = fs.readSync(fd, bytes, 0, bytes.length, null); fs.readSync(fd, bytes, n, 1, null); fs.fstatSync(fd); fs.closeSync(fd)
        let t2 = now(); steps.readMs.push(t2 - t); t = t2
        crypto.createHash('sha256').update(bytes.subarray(0, n)).digest('hex')
        t2 = now(); steps.sha256Ms.push(t2 - t); t = t2
        const cp = path.join(store.dir, `bench-${i}.so`)
        const o = fs.openSync(cp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o700)
        fs.fchmodSync(o, 0o700); fs.writeSync(o, bytes, 0, n)
        t2 = now(); steps.writeMs.push(t2 - t); t = t2
        fs.fsyncSync(o)
        t2 = now(); steps.fsyncMs.push(t2 - t); t = t2
        fs.closeSync(o)
        const back = fs.readFileSync(cp)
        crypto.createHash('sha256').update(back).digest('hex')
        t2 = now(); steps.verifyMs.push(t2 - t)
        fs.unlinkSync(cp)
      }
      b.snapshotSteps = Object.fromEntries(Object.entries(steps).map(([k, v]) => [k, round3(median(v))]))
      // validate: parseElf + checkHostCompatible + detectAbi on the bytes
      const valMs = []
      for (const s of snaps) {
        const t0 = now()
        const info = elf.parseElf(s.bytes, src)
        elf.checkHostCompatible(info, src)
        elf.detectAbi(info)
        valMs.push(now() - t0)
      }
      b.validateMs = round3(median(valMs))
      // open(): stat + realpath + read/sha256/ELF facts + dlopen, then release (dlclose)
      const openMs = []; const releaseMs = []
      for (const s of snaps.slice(0, N / 2)) {
        const t0 = now()
        const lib = dlhost.open(s.path, { pin: false })
        const t1 = now()
        lib.release()
        openMs.push(t1 - t0); releaseMs.push(now() - t1)
      }
      b.openMs = round3(median(openMs))
      b.releaseMs = round3(median(releaseMs))
      // load(): open + runtime + poll thread + dlhost_open + init event; then unload
      const loadMs = []; const unloadMs = []
      for (const s of snaps.slice(N / 2)) {
        const t0 = now()
        const rt = await dlhost.load(s.path, null, { pin: false })
        const t1 = now()
        await rt.call(REQ)
        const t2 = now()
        await rt.unload()
        loadMs.push(t1 - t0); unloadMs.push(now() - t2)
      }
      b.loadMs = round3(median(loadMs))
      b.unloadMs = round3(median(unloadMs))
      // the same with maxQueue 1024: the request ring is 16 KiB instead of 1 MiB
      const load1kMs = []
      for (let i = 0; i < N / 2; i++) {
        install(variants[i & 1].path, src)
        const s = await store.snapshot(src) // fresh identity: no cached facts
        snaps.push(s)
        const t0 = now()
        const rt = await dlhost.load(s.path, null, { pin: false, maxQueue: 1024 })
        load1kMs.push(now() - t0)
        await rt.unload()
      }
      b.loadSmallQueueMs = round3(median(load1kMs))
      // drain asks the loader whether the old copy is still mapped
      b.isMappedMs = round3(median(snaps.map(s => { const t0 = now(); binding.isMapped(s.path); return now() - t0 })))
      // A lean reload, done from outside with public pieces: synchronous read,
      // sha256, validate, write the copy without fsync or read-back, load with
      // a small ring. Roughly what the reload path costs without the extra
      // threadpool hops, fsync, verification and the 1 MiB ring.
      const leanMs = []
      for (let i = 0; i < N / 2; i++) {
        install(variants[i & 1].path, src)
        const t0 = now()
        const bytes = fs.readFileSync(src)
        crypto.createHash('sha256').update(bytes).digest('hex')
        const info = elf.parseElf(bytes, src)
        elf.checkHostCompatible(info, src)
        elf.detectAbi(info)
        const cp = path.join(store.dir, `lean-${i}.so`)
        fs.writeFileSync(cp, bytes, { mode: 0o700, flag: 'wx' })
        const rt = await dlhost.load(cp, null, { pin: false, maxQueue: 1024 })
        leanMs.push(now() - t0)
        await rt.unload()
        fs.unlinkSync(cp)
      }
      b.leanMs = round3(median(leanMs))
      // remove a copy
      const rmMs = []
      for (const s of snaps) { const t0 = now(); await store.remove(s.path); rmMs.push(now() - t0) }
      b.removeMs = round3(median(rmMs))
    } finally {
      await store.close()
    }
    const shadowMs = out.strategies.shadow.medianMs
    const drainMs = out.strategies.drain.medianMs
    b.shadowRestMs = round3(shadowMs - b.snapshotMs - b.validateMs - b.loadMs)
    b.drainRestMs = round3(drainMs - b.snapshotMs - b.validateMs - b.loadMs - b.unloadMs)
    out.breakdown = b
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return out
}

module.exports = { benchReload }
