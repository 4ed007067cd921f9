'use strict'
// Loader: one dlopen + dlclose cycle through dlhost (open({ pin: false }) +
// release(): identity, trust, content facts, dlopen and dlclose on the
// library's owner thread, the unmapping verified) beside the raw C loop
// (bench/dlloop.c) on the same file, interleaved rounds.
const { execFileSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { log, now, median, round3 } = require('../lib/harness')
const { dlhost, QUICK, ROUNDS, LIBS } = require('../lib/config')
const { buildDlloop } = require('../lib/build')

async function benchLoader () {
  log('loader: dlopen + dlclose cycles, dlhost open()/release() beside a raw C loop…')
  const loop = buildDlloop()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-loader-'))
  try {
    const lib = path.join(dir, 'libecho_loader.so')
    fs.copyFileSync(LIBS.host, lib)
    const n = QUICK ? 300 : 1000
    const dl = []
    const raw = []
    for (let r = 0; r < ROUNDS; r++) {
      const t0 = now()
      for (let i = 0; i < n; i++) {
        const l = dlhost.open(lib, { pin: false })
        l.release()
        if (l.mapped) throw new Error('loader: still mapped after the last release')
      }
      dl.push(((now() - t0) * 1e6) / n)
      raw.push(Number(execFileSync(loop, [lib, String(n * 10)], { encoding: 'utf8' })))
    }
    return {
      cycles: n,
      dlhostUs: round3(median(dl) / 1000),
      rawCUs: round3(median(raw) / 1000),
      vsRawC: round3(median(dl.map((x, i) => x / raw[i]))),
      roundDlhostUs: dl.map(x => round3(x / 1000)),
      roundRawCUs: raw.map(x => round3(x / 1000))
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

module.exports = { benchLoader }
