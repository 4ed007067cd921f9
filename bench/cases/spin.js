'use strict'
// The spin knobs (setSpin): latency, busy and idle CPU; again pinned to one CPU.
const path = require('path')
const { log, now, sleep, median, round3, latencyRound, cpuPercent, warm } = require('../lib/harness')
const { ROUNDS, ROUND_MS, IDLE_MS, NO_IDLE, REQ } = require('../lib/config')

// Spin knobs: sequential round trip + CPU while busy + CPU of an idle second.
async function benchSpin (rts) {
  log('spin knobs (setSpin(jsNs, pollerNs)) …')
  const settings = [
    { label: 'default (adaptive, 50 µs / 50 µs)', js: -1, poller: -1 },
    { label: 'fixed 50 µs / 50 µs (not adaptive)', js: 50000, poller: 50000 },
    { label: '0 / 0', js: 0, poller: 0 },
    { label: '20 µs / 50 µs', js: 20000, poller: 50000 },
    { label: '50 µs / 100 µs', js: 50000, poller: 100000 },
    { label: '200 µs / 200 µs', js: 200000, poller: 200000 }
  ]
  const abis = ['host', 'native'].filter(a => rts[a])
  const immFn = () => new Promise(resolve => setImmediate(resolve))
  const rows = []
  for (const s of settings) {
    for (const abi of abis) rts[abi].setSpin(s.js, s.poller)
    const row = { setting: s.label, jsSpinNs: s.js, pollerSpinNs: s.poller }
    const rounds = Math.max(2, Math.min(ROUNDS, 3))
    for (const abi of abis) {
      const fn = () => rts[abi].call(REQ)
      await warm(fn, 100)
      const meds = []; const p99s = []; const ratios = []; const cpus = []
      for (let r = 0; r < rounds; r++) {
        const imm = await latencyRound(immFn, ROUND_MS / 2)
        const u0 = process.cpuUsage(); const t0 = now()
        const x = await latencyRound(fn, ROUND_MS)
        cpus.push(cpuPercent(u0, now() - t0))
        meds.push(x.median); p99s.push(x.p99); ratios.push(x.median / imm.median)
      }
      row[abi] = {
        medianUs: round3(median(meds)),
        p99Us: round3(median(p99s)),
        vsSetImmediate: round3(median(ratios)),
        busyCpuPct: Math.round(median(cpus))
      }
    }
    // Calls have stopped: an idle runtime must not burn CPU.
    if (!NO_IDLE) {
      await sleep(20) // let the spin budgets run out (max 200 µs)
      const u0 = process.cpuUsage(); const t0 = now()
      await sleep(IDLE_MS)
      row.idleCpuPct = round3(cpuPercent(u0, now() - t0))
    }
    rows.push(row)
  }
  for (const abi of abis) rts[abi].setSpin(-1, -1) // the default again
  return rows
}

// The spin settings again, in a child process pinned to one CPU: what a busy
// machine looks like to dlhost when the JS thread and the poll thread have to
// share a core.
function benchSpinPinned () {
  log('spin knobs on one CPU (taskset -c 0, child process)…')
  const { spawnSync } = require('child_process')
  const args = ['-c', '0', process.execPath, path.join(__dirname, '..', 'run.js'), '--only=spin', '--json', '--quick', '--no-idle']
  const r = spawnSync('taskset', args, { encoding: 'utf8', env: process.env, timeout: 60000 })
  if (r.error || r.status !== 0) {
    log(`  (skipped: taskset ${r.error ? r.error.message : `exit ${r.status}: ${String(r.stderr).trim().split('\n').pop()}`})`)
    return null
  }
  return JSON.parse(r.stdout).spin
}

module.exports = { benchSpin, benchSpinPinned }
