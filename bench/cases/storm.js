'use strict'
// Throughput during a reload storm (10 reloads/s).
const fs = require('fs')
const os = require('os')
const path = require('path')
const { install } = require('../lib/build')
const { log, median, round3, throughputRound } = require('../lib/harness')
const { dlhost, STORM_MS, STORM_PAIRS, REQ } = require('../lib/config')

// 5. throughput during a reload storm (10 reloads/s, alternating two builds)
async function benchStorm (variants) {
  log('reload storm (256 in flight, 10 reloads/s)…')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-'))
  const target = path.join(dir, 'plugin.so')
  install(variants[0].path, target)
  const plugin = await dlhost.reloadable(target, null, { watch: false, strategy: 'shadow' })
  let reloadErrors = 0
  plugin.on('error', () => { reloadErrors++ })
  const fn = () => plugin.call(REQ)
  const steady = []; const storm = []; const reloads = []; const ratios = []
  let failed = 0
  let cur = 0
  try {
    await throughputRound(fn, 256, 200)
    for (let r = 0; r < STORM_PAIRS; r++) {
      const a = await throughputRound(fn, 256, STORM_MS)
      const before = plugin.reloads
      const timer = setInterval(() => {
        cur ^= 1
        install(variants[cur].path, target)
        plugin.reload().catch(() => { reloadErrors++ })
      }, 100)
      const b = await throughputRound(fn, 256, STORM_MS)
      clearInterval(timer)
      await plugin.reload().catch(() => {}) // let the last one finish
      reloads.push(plugin.reloads - before)
      steady.push(a.callsPerSec); storm.push(b.callsPerSec); ratios.push(b.callsPerSec / a.callsPerSec)
      failed += a.failed + b.failed
    }
  } finally {
    await plugin.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return {
    inFlight: 256,
    windowMs: STORM_MS,
    steadyCallsPerSec: Math.round(median(steady)),
    stormCallsPerSec: Math.round(median(storm)),
    ratio: round3(median(ratios)),
    roundRatios: ratios.map(round3),
    reloadsPerWindow: reloads,
    failedCalls: failed,
    reloadErrors
  }
}

module.exports = { benchStorm }
