#!/usr/bin/env node
'use strict'
// `node bench/fuzz-elf.js [--n=250] [--seed=1] [--lib=examples/out/libecho_host.so]`
//
// How many mutated builds pass dlhost's validation and still crash the
// loader? Mutates a valid plugin (1-8 random bytes anywhere), keeps the first
// N mutants that pass the checks open() makes before dlopen (parseElf,
// checkHostCompatible, an entry symbol), then dlopen()s each in its own tiny
// C process and counts the ones that die of a signal or an ld.so assertion.
// Deterministic for a seed. Not part of `npm test`: it compiles and forks.
const { execFileSync, spawnSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

const root = path.join(__dirname, '..')
const arg = (name, dflt) => { const a = process.argv.find(x => x.startsWith(`--${name}=`)); return a === undefined ? dflt : a.slice(name.length + 3) }
const N = Number(arg('n', 250))
let seed = Number(arg('seed', 1)) >>> 0 || 1
const lib = path.resolve(root, arg('lib', 'examples/out/libecho_host.so'))
const { parseElf } = require(path.join(root, 'dist', 'elf'))
const { checkHostCompatible, detectAbi } = require(path.join(root, 'dist', 'rules'))

const rnd = (n) => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed % n }

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-fuzz-'))
try {
  const loader = path.join(dir, 'loader')
  fs.writeFileSync(loader + '.c', `
    #include <dlfcn.h>
    #include <stdio.h>
    int main(int c, char **v) { void *h = dlopen(v[1], RTLD_NOW | RTLD_LOCAL); if (!h) { printf("%s\\n", dlerror()); return 3; } dlclose(h); return 0; }`)
  execFileSync('cc', ['-O1', '-o', loader, loader + '.c', '-ldl'])
  const good = fs.readFileSync(lib)
  // Which section (or header) a file offset lies in, for --verbose.
  const secs = String(execFileSync('readelf', ['-SW', lib], { encoding: 'utf8' })).split('\n')
    .map(l => /\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(l)).filter(Boolean)
    .map(m => ({ name: m[1], off: parseInt(m[2], 16), size: parseInt(m[3], 16) }))
  const where = (o) => o < 64 ? 'ehdr' : (secs.find(s => o >= s.off && o < s.off + s.size)?.name ?? (o < (secs[1]?.off ?? 0) ? 'phdrs' : 'other'))
  let tried = 0
  let passed = 0
  const outcome = { loaded: 0, refused: 0, crashed: 0, asserted: 0, hung: 0 }
  const crashes = []
  while (passed < N && tried < N * 400) {
    tried++
    const b = Buffer.from(good)
    const flips = 1 + rnd(8)
    const at = []
    for (let i = 0; i < flips; i++) { const o = rnd(b.length); at.push(o); b[o] ^= 1 + rnd(255) }
    try {
      const info = parseElf(b, 'mutant')
      checkHostCompatible(info, 'mutant')
      if (detectAbi(info).abi === null) continue
    } catch { continue }
    passed++
    const file = path.join(dir, `m${passed}.so`)
    fs.writeFileSync(file, b)
    const r = spawnSync(loader, [file], { encoding: 'utf8', timeout: 5000 })
    if (r.error && r.error.code === 'ETIMEDOUT') outcome.hung++
    else if (r.signal) { outcome.crashed++; crashes.push(`m${passed}: ${r.signal} at ${at.map(where).join(' ')}`) } else if (r.status === 0) outcome.loaded++
    else if (r.status === 3) outcome.refused++
    else { outcome.asserted++; crashes.push(`m${passed}: exit ${r.status} ${String(r.stderr).trim().split('\n').pop()}`) }
    if (process.argv.includes('--keep') && (r.signal || (r.status !== 0 && r.status !== 3))) fs.copyFileSync(file, path.join(os.tmpdir(), `dlhost-fuzz-m${passed}.so`))
    fs.unlinkSync(file)
  }
  const result = { lib: path.relative(root, lib), seed: Number(arg('seed', 1)), mutantsTried: tried, passedValidation: passed, ...outcome, killedTheLoader: outcome.crashed + outcome.asserted + outcome.hung }
  console.log(JSON.stringify(result, null, 2))
  if (process.argv.includes('--verbose')) console.log(crashes.join('\n'))
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}
