// lib/elf.ts against the real fixtures, readelf's view of them, synthetic
// ELF32 / big-endian images, and every kind of truncation and corruption.
import t, { Test } from 'tap'
import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import {
  parseElf, elfCompleteness, readElfFile, machineName, ElfInfo
} from '../lib/elf'
import { DlhostError } from '../lib/errors'
import { checkHostCompatible, detectAbi, hostElf, stuckReasons } from '../lib/rules'

// A regular file, read whole and parsed (readElfFile's synchronous twin for these tests).
const readElfSync = (p: string): ElfInfo => parseElf(fs.readFileSync(p), p)

const OUT = path.join(__dirname, 'fixtures', 'out')
const fx = (name: string): string => path.join(OUT, name)
const C_FIXTURES = ['plain.so', 'plain2.so', 'nodelete.so', 'unique.so', 'tls.so']

function goAvailable (): boolean {
  return spawnSync('go', ['version'], { stdio: 'ignore' }).status === 0
}
/** The Go fixture must exist wherever `go` does (CI installs it); skip only without go. */
function goFixture (t: Test): string | undefined {
  const f = fx('goplugin.so')
  if (fs.existsSync(f)) return f
  if (!goAvailable()) { t.plan(0, 'go is not installed: no Go c-shared fixture'); return undefined }
  t.fail('go is installed but test/fixtures/out/goplugin.so was not built (run make -C test/fixtures)')
  return undefined
}

// ─── readelf, for the truth ────────────────────────────────────────────────

// binutils warns about some toolchains' output ("local symbol 0 found at
// index >= .dynsym's sh_info", for Go's): its stderr is kept out of the test
// output; only those known warnings are tolerated.
function readelf (args: string[], file: string): string {
  const r = spawnSync('readelf', [...args, '-W', file], { encoding: 'utf8', maxBuffer: 512 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C' } })
  const unexpected = r.stderr.split('\n').filter(l => l !== '' && !/^readelf: Warning: local symbol \d+ found at index >= \.dynsym's sh_info/.test(l))
  if (r.status !== 0 || unexpected.length > 0) throw new Error(`readelf ${args.join(' ')} ${file}: exit ${String(r.status)}\n${unexpected.join('\n')}`)
  return r.stdout
}

interface Truth {
  class: 32 | 64
  endian: 'le' | 'be'
  type: string
  machineLine: string
  needed: string[]
  soname?: string
  nodelete: boolean
  tls: boolean
  exports: string[]
  imports: string[]
  unique: string[]
}

function truth (file: string): Truth {
  const h = readelf(['-h'], file)
  const d = readelf(['-d'], file)
  const l = readelf(['-l'], file)
  const s = readelf(['--dyn-syms'], file)
  const exports = new Set<string>()
  const imports = new Set<string>()
  const unique = new Set<string>()
  for (const line of s.split('\n')) {
    const m = /^\s*\d+:\s+([0-9a-f]+)\s+(\d+|0x[0-9a-f]+)\s+(\w+)\s+(\w+)\s+(\w+)\s+(\S+)\s+(\S+)/.exec(line)
    if (m === null) continue
    const [, value, size, type, bind, vis, ndx, rawName] = m as unknown as string[]
    const name = (rawName as string).split('@')[0] as string
    if (name === '' || bind === 'LOCAL') continue
    if (ndx === 'UND') { imports.add(name); continue }
    if (bind === 'UNIQUE') unique.add(name)
    if (ndx === 'ABS' && /^0+$/.test(value as string) && size === '0') continue
    if (vis === 'HIDDEN' || vis === 'INTERNAL') continue
    if (!['FUNC', 'OBJECT', 'IFUNC', 'COMMON'].includes(type as string)) continue
    exports.add(name)
  }
  const soname = /\(SONAME\)\s+Library soname: \[(.*)\]/.exec(d)?.[1]
  const out: Truth = {
    class: /Class:\s+ELF64/.test(h) ? 64 : 32,
    endian: /Data:.*little endian/.test(h) ? 'le' : 'be',
    type: 'ET_' + ((/Type:\s+(\w+)/.exec(h)?.[1]) ?? '?'),
    machineLine: (/Machine:\s+(.*)/.exec(h)?.[1] ?? '').trim(),
    needed: [...d.matchAll(/\(NEEDED\)\s+Shared library: \[(.*)\]/g)].map(x => x[1] as string),
    nodelete: /\(FLAGS_1\).*NODELETE/.test(d),
    tls: /^\s+TLS\s/m.test(l),
    exports: [...exports].sort(),
    imports: [...imports].sort(),
    unique: [...unique].sort()
  }
  if (soname !== undefined) out.soname = soname
  return out
}

function assertMatchesReadelf (t: Test, info: ElfInfo, file: string): void {
  const r = truth(file)
  t.equal(info.class, r.class, 'class')
  t.equal(info.endian, r.endian, 'endian')
  t.equal(info.type, r.type, 'type')
  t.same(info.needed, r.needed, 'DT_NEEDED')
  t.equal(info.soname, r.soname, 'DT_SONAME')
  t.equal(info.nodelete, r.nodelete, 'DF_1_NODELETE')
  t.equal(info.tls, r.tls, 'PT_TLS')
  t.same(info.exports, r.exports, 'exports')
  t.same(info.imports, r.imports, 'imports')
  t.same(info.gnuUnique, r.unique, 'GNU_UNIQUE symbols')
}

function code (err: unknown): unknown { return (err as { code?: unknown }).code }

function expectNotElf (t: Test, fn: () => unknown, msg: string): void {
  try {
    fn()
    t.fail(`${msg}: did not throw`)
  } catch (err) {
    t.ok(err instanceof DlhostError, `${msg}: a DlhostError`)
    t.equal(code(err), 'ERR_NOT_ELF', `${msg}: ERR_NOT_ELF`)
  }
}

// ─── a tiny ELF writer for images no compiler here can make ───────────────

interface SynthSym { name: string, bind: number, type: number, defined: boolean }
interface SynthOpts {
  is64: boolean
  le: boolean
  machine: number
  type?: number
  needed?: string[]
  soname?: string
  flags1?: number
  tls?: boolean
  sections?: boolean
  syms: SynthSym[]
}

/**
 * A minimal but well-formed ELF shared object: PT_LOAD (identity-mapped),
 * PT_DYNAMIC, optional PT_TLS, .dynstr/.dynsym/.hash/.dynamic/.text and
 * section headers (unless sections: false).
 */
function synthElf (o: SynthOpts): Buffer {
  const W = o.is64 ? 8 : 4
  const ehsize = o.is64 ? 64 : 52
  const phent = o.is64 ? 56 : 32
  const shent = o.is64 ? 64 : 40
  const syment = o.is64 ? 24 : 16
  const dynent = 2 * W
  const align = (n: number): number => (n + 7) & ~7
  const buf = Buffer.alloc(65536)
  const u16 = (off: number, v: number): void => { o.le ? buf.writeUInt16LE(v, off) : buf.writeUInt16BE(v, off) }
  const u32 = (off: number, v: number): void => { o.le ? buf.writeUInt32LE(v >>> 0, off) : buf.writeUInt32BE(v >>> 0, off) }
  const word = (off: number, v: number): void => {
    if (o.is64) { o.le ? buf.writeBigUInt64LE(BigInt(v), off) : buf.writeBigUInt64BE(BigInt(v), off) } else u32(off, v)
  }

  // dynstr
  const strs: string[] = ['']
  const strOff = new Map<string, number>([['', 0]])
  let strLen = 1
  const str = (s: string): number => {
    const have = strOff.get(s)
    if (have !== undefined) return have
    strOff.set(s, strLen); strs.push(s); strLen += Buffer.byteLength(s) + 1
    return strOff.get(s) as number
  }
  const needed = o.needed ?? []
  needed.forEach(str)
  if (o.soname !== undefined) str(o.soname)
  o.syms.forEach(s => str(s.name))

  const phnum = 2 + (o.tls === true ? 1 : 0)
  let off = align(ehsize + phnum * phent)
  const dynstrOff = off
  Buffer.from(strs.join('\0') + '\0').copy(buf, dynstrOff)
  off = align(dynstrOff + strLen)
  const nsyms = o.syms.length + 1
  const dynsymOff = off
  const textIndex = 5 // section index of .text below
  o.syms.forEach((s, i) => {
    const e = dynsymOff + (i + 1) * syment
    u32(e, str(s.name))
    const info = (s.bind << 4) | s.type
    const shndx = s.defined ? textIndex : 0
    if (o.is64) { buf[e + 4] = info; buf[e + 5] = 0; u16(e + 6, shndx); word(e + 8, s.defined ? 0x100 : 0); word(e + 16, s.defined ? 4 : 0) } else { u32(e + 4, s.defined ? 0x100 : 0); u32(e + 8, s.defined ? 4 : 0); buf[e + 12] = info; buf[e + 13] = 0; u16(e + 14, shndx) }
  })
  off = align(dynsymOff + nsyms * syment)
  const hashOff = off // DT_HASH: nbucket=1, nchain=nsyms, bucket[0]=0, chains all 0
  u32(hashOff, 1); u32(hashOff + 4, nsyms)
  off = align(hashOff + 8 + 4 + 4 * nsyms)
  const textOff = off
  off = align(textOff + 16)
  const dynOff = off
  const dyn: Array<[number, number]> = []
  for (const n of needed) dyn.push([1, str(n)])
  if (o.soname !== undefined) dyn.push([14, str(o.soname)])
  dyn.push([4, hashOff], [5, dynstrOff], [6, dynsymOff], [10, strLen], [11, syment])
  if (o.flags1 !== undefined) dyn.push([0x6ffffffb, o.flags1])
  dyn.push([0, 0])
  dyn.forEach(([k, v], i) => { word(dynOff + i * dynent, k); word(dynOff + i * dynent + W, v) })
  off = dynOff + dyn.length * dynent
  const loadEnd = off
  // .shstrtab and section headers
  const shnames = ['', '.dynstr', '.dynsym', '.hash', '.dynamic', '.text', '.shstrtab']
  const shstrOff = off
  const shstr = shnames.join('\0') + '\0'
  Buffer.from(shstr).copy(buf, shstrOff)
  const nameAt = (n: string): number => n === '' ? 0 : shstr.indexOf('\0' + n + '\0') + 1
  off = align(shstrOff + shstr.length)
  const shoff = o.sections === false ? 0 : off
  const secs: Array<[string, number, number, number, number, number]> = [ // name, type, offset, size, link, entsize
    ['', 0, 0, 0, 0, 0],
    ['.dynstr', 3, dynstrOff, strLen, 0, 0],
    ['.dynsym', 11, dynsymOff, nsyms * syment, 1, syment],
    ['.hash', 5, hashOff, 8 + 4 + 4 * nsyms, 2, 4],
    ['.dynamic', 6, dynOff, dyn.length * dynent, 1, dynent],
    ['.text', 1, textOff, 16, 0, 0],
    ['.shstrtab', 3, shstrOff, shstr.length, 0, 0]
  ]
  if (shoff !== 0) {
    secs.forEach(([name, type, soff, size, link, entsize], i) => {
      const e = shoff + i * shent
      u32(e, nameAt(name)); u32(e + 4, type)
      if (o.is64) { word(e + 16, type === 0 ? 0 : soff); word(e + 24, soff); word(e + 32, size); u32(e + 40, link); word(e + 48, 8); word(e + 56, entsize) } else { u32(e + 12, type === 0 ? 0 : soff); u32(e + 16, soff); u32(e + 20, size); u32(e + 24, link); u32(e + 32, 8); u32(e + 36, entsize) }
    })
  }
  const total = shoff !== 0 ? shoff + secs.length * shent : loadEnd
  // program headers: PT_LOAD, PT_DYNAMIC, PT_TLS
  const phdrs: Array<[number, number, number, number]> = [[1, 0, loadEnd, loadEnd], [2, dynOff, dyn.length * dynent, dyn.length * dynent]]
  if (o.tls === true) phdrs.push([7, textOff, 0, 8])
  phdrs.forEach(([type, poff, filesz, memsz], i) => {
    const e = ehsize + i * phent
    u32(e, type)
    // p_flags PF_R | PF_X: the code a symbol names is executable, as in a real shared object
    if (o.is64) { u32(e + 4, 5); word(e + 8, poff); word(e + 16, poff); word(e + 24, poff); word(e + 32, filesz); word(e + 40, memsz); word(e + 48, 8) } else { u32(e + 4, poff); u32(e + 8, poff); u32(e + 12, poff); u32(e + 16, filesz); u32(e + 20, memsz); u32(e + 24, 5); u32(e + 28, 8) }
  })
  // ELF header
  buf.write('\x7fELF', 0, 'latin1')
  buf[4] = o.is64 ? 2 : 1; buf[5] = o.le ? 1 : 2; buf[6] = 1; buf[7] = 3 // ELFOSABI_GNU, as with STB_GNU_UNIQUE
  u16(16, o.type ?? 3); u16(18, o.machine); u32(20, 1)
  if (o.is64) {
    word(32, ehsize); word(40, shoff); u16(52, ehsize); u16(54, phent); u16(56, phnum)
    u16(58, shent); u16(60, shoff === 0 ? 0 : secs.length); u16(62, shoff === 0 ? 0 : 6)
  } else {
    u32(28, ehsize); u32(32, shoff); u16(40, ehsize); u16(42, phent); u16(44, phnum)
    u16(46, shent); u16(48, shoff === 0 ? 0 : secs.length); u16(50, shoff === 0 ? 0 : 6)
  }
  return Buffer.from(buf.subarray(0, total))
}

const SYNTH_SYMS: SynthSym[] = [
  { name: 'dlhost_handle', bind: 1, type: 2, defined: true },
  { name: 'plugin_table', bind: 1, type: 1, defined: true },
  { name: 'weak_hook', bind: 2, type: 2, defined: true },
  { name: 'static_counter', bind: 10, type: 1, defined: true },
  { name: 'local_helper', bind: 0, type: 2, defined: true },
  { name: 'malloc', bind: 1, type: 2, defined: false },
  { name: '__cxa_thread_atexit_impl', bind: 2, type: 2, defined: false }
]

// ─── tests ─────────────────────────────────────────────────────────────────

t.test('C fixtures: the facts match readelf', async t => {
  for (const name of C_FIXTURES) {
    await t.test(name, async t => {
      const file = fx(name)
      const buf = fs.readFileSync(file)
      const info = parseElf(buf, file)
      assertMatchesReadelf(t, info, file)
      t.equal(info.path, file)
      t.equal(info.machine, hostElf().machine, 'built for this machine')
      t.equal(info.symbolSource, 'sections')
      t.same(elfCompleteness(buf), { complete: true })
      t.same(parseElf(new Uint8Array(buf) as Buffer, file), info, 'a plain Uint8Array works too')
      t.same(readElfSync(file), info, 'readElfFileSync agrees')
      t.same(await readElfFile(file), info, 'readElfFile agrees')
      t.doesNotThrow(() => checkHostCompatible(info), 'loadable by this process')
    })
  }
})

t.test('stuckReasons and the facts behind them', async t => {
  const info = (n: string): ElfInfo => readElfSync(fx(n))
  t.same(stuckReasons(info('plain.so')), [], 'plain C library: nothing keeps it')
  t.same(stuckReasons(info('plain2.so')), [])
  const nd = info('nodelete.so')
  t.equal(nd.nodelete, true)
  t.same(stuckReasons(nd), ['NODELETE'])
  const un = info('unique.so')
  t.same(un.gnuUnique, ['_ZZ7countervE1c'], 'the inline function\'s static local is STB_GNU_UNIQUE')
  t.same(stuckReasons(un), ['GNU_UNIQUE'])
  const tl = info('tls.so')
  t.equal(tl.tls, true, 'PT_TLS')
  t.equal(tl.threadAtexit, true, 'imports __cxa_thread_atexit')
  t.ok(tl.imports.includes('__cxa_thread_atexit'), 'version suffix stripped')
  t.same(stuckReasons(tl), ['TLS destructors pending'])
  for (const n of C_FIXTURES) t.equal(info(n).goRuntime, false, `${n} has no Go runtime`)

  // Order is fixed whatever the combination.
  const all: ElfInfo = { ...nd, gnuUnique: ['x'], tls: true, threadAtexit: true, goRuntime: true }
  t.same(stuckReasons(all), ['NODELETE', 'GNU_UNIQUE', 'TLS destructors pending', 'Go runtime'])
  t.same(stuckReasons({ ...tl, threadAtexit: false }), [], 'TLS without destructors is no reason')
  t.same(stuckReasons({ ...tl, tls: false }), [], 'thread_atexit import without a TLS segment is no reason')
})

t.test('Go c-shared library', async t => {
  const file = goFixture(t)
  if (file === undefined) return
  const info = readElfSync(file)
  assertMatchesReadelf(t, info, file)
  t.equal(info.goRuntime, true, 'Go runtime detected')
  t.ok(/\.go\.buildinfo|\.note\.go\.buildid/.test(readelf(['-S'], file)), 'readelf sees Go sections too')
  t.ok(info.exports.includes('dlhost_handle') && info.exports.includes('go_answer'), '//export functions are exported')
  t.ok(stuckReasons(info).includes('Go runtime'))
  // Go links c-shared libraries with -z nodelete; whatever it does, both facts must agree with readelf.
  t.equal(stuckReasons(info).includes('NODELETE'), truth(file).nodelete)
  t.equal(info.staticTls, /\(FLAGS\).*STATIC_TLS/.test(readelf(['-d'], file)), 'DF_STATIC_TLS as readelf says')
  t.same(detectAbi(info), { abi: 'host', entry: 'dlhost_handle' })
  t.same(elfCompleteness(fs.readFileSync(file)), { complete: true })
})

t.test('detectAbi precedence', async t => {
  const base = readElfSync(fx('plain.so'))
  const with_ = (...exports: string[]): ElfInfo => ({ ...base, exports })
  t.same(detectAbi(base), { abi: null, entry: null })
  t.same(detectAbi(with_('libffi_init')), { abi: 'lua-resty-ffi', entry: 'libffi_init' })
  t.same(detectAbi(with_('dlhost_handle', 'libffi_init')), { abi: 'host', entry: 'dlhost_handle' })
  t.same(detectAbi(with_('dlhost_handle', 'dlhost_init', 'libffi_init')), { abi: 'native', entry: 'dlhost_init' })
  t.same(detectAbi(with_('dlhost_open', 'dlhost_close')), { abi: null, entry: null }, 'helpers alone are no entry')
})

t.test('not ELF', async t => {
  expectNotElf(t, () => parseElf(Buffer.alloc(0)), 'empty buffer')
  expectNotElf(t, () => parseElf(Buffer.from('hello, I am a text file\n')), 'text')
  expectNotElf(t, () => parseElf(Buffer.from('\x7fEL', 'latin1')), '3 bytes of magic')
  expectNotElf(t, () => parseElf(Buffer.from('#!/bin/sh\necho hi\n')), 'script')
  expectNotElf(t, () => parseElf('not a buffer' as unknown as Buffer), 'a string')
  const bad = fs.readFileSync(fx('plain.so'))
  bad[4] = 3
  expectNotElf(t, () => parseElf(bad), 'bad EI_CLASS')
  t.match(elfCompleteness(Buffer.alloc(0)), { complete: false, reason: /empty/ })
  t.match(elfCompleteness(Buffer.from('text')), { complete: false, reason: /magic/ })
  try {
    parseElf(Buffer.from('nope'), '/some/file.so')
  } catch (err) {
    t.equal((err as DlhostError).path, '/some/file.so', 'the path is on the error')
    t.match((err as DlhostError).reason, /magic/)
  }
})

t.test('truncation: every proper prefix is incomplete and not ELF', async t => {
  const full = fs.readFileSync(fx('plain.so'))
  const info = parseElf(full)
  t.ok(info.exports.length > 0)
  // Named cut points first, with the reason each must give.
  const is64 = full[4] === 2
  const phoff = Number(full.readBigUInt64LE(32))
  const shoff = Number(full.readBigUInt64LE(40))
  t.ok(is64 && phoff > 0 && shoff > 0, 'fixture layout as expected')
  const cuts: Array<[string, number, RegExp]> = [
    ['mid e_ident', 10, /truncated ELF header/],
    ['mid ELF header', 40, /truncated ELF header/],
    ['mid program headers', phoff + 56 + 20, /truncated program header table/],
    ['mid section table', shoff + 64 * 2 + 7, /truncated section header table/],
    ['section table start', shoff, /truncated section header table/],
    ['last byte missing', full.length - 1, /truncated section header table/]
  ]
  for (const [what, len, reason] of cuts) {
    const c = elfCompleteness(full.subarray(0, len))
    t.equal(c.complete, false, `${what}: incomplete`)
    t.match(c.reason, reason, `${what}: ${String(c.reason)}`)
    expectNotElf(t, () => parseElf(full.subarray(0, len)), what)
  }
  // Then all of them: no prefix may parse or throw anything but ERR_NOT_ELF.
  let wrong = 0
  for (let len = 0; len < full.length; len++) {
    const part = full.subarray(0, len)
    if (elfCompleteness(part).complete) wrong++
    try { parseElf(part); wrong++ } catch (err) { if (code(err) !== 'ERR_NOT_ELF') wrong++ }
  }
  t.equal(wrong, 0, `all ${full.length} prefixes rejected`)
})

t.test('a section or segment outside the file is incomplete', async t => {
  const full = fs.readFileSync(fx('plain.so'))
  const shoff = Number(full.readBigUInt64LE(40))
  const shnum = full.readUInt16LE(60)
  const phoff = Number(full.readBigUInt64LE(32))
  // The first PROGBITS section: push its size past the end.
  const sec = Buffer.from(full)
  let idx = -1
  for (let i = 1; i < shnum; i++) if (sec.readUInt32LE(shoff + i * 64 + 4) === 1) { idx = i; break }
  t.ok(idx > 0)
  sec.writeBigUInt64LE(BigInt(full.length), shoff + idx * 64 + 32)
  t.match(elfCompleteness(sec), { complete: false, reason: new RegExp(`section ${idx} .*outside the file`) })
  expectNotElf(t, () => parseElf(sec), 'section outside')
  // The first segment's file size past the end.
  const seg = Buffer.from(full)
  seg.writeBigUInt64LE(BigInt(full.length * 2), phoff + 32)
  t.match(elfCompleteness(seg), { complete: false, reason: /segment 0 .*outside the file/ })
  expectNotElf(t, () => parseElf(seg), 'segment outside')
  // A zero-filled (not yet written) section header table.
  const zeroed = Buffer.from(full)
  zeroed.fill(0, shoff + 64)
  t.match(elfCompleteness(zeroed), { complete: false, reason: /string table/ })
  // A huge e_shoff / e_phnum.
  const far = Buffer.from(full)
  far.writeBigUInt64LE(0xffffffffffffff00n, 40)
  t.match(elfCompleteness(far), { complete: false, reason: /section header table/ })
  const many = Buffer.from(full)
  many.writeUInt16LE(0xfffe, 56)
  t.match(elfCompleteness(many), { complete: false, reason: /program header table/ })
})

t.test('random corruption never throws anything but ERR_NOT_ELF', async t => {
  let seed = 0x2545f491
  const rnd = (n: number): number => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) % n }
  const bases = ['plain.so', 'tls.so', 'unique.so'].map(n => fs.readFileSync(fx(n)))
  let parsed = 0
  let rejected = 0
  const bad: string[] = []
  for (let i = 0; i < 3000; i++) {
    const base = bases[i % bases.length] as Buffer
    const b = Buffer.from(base)
    // Mostly the headers and tables, where the offsets live.
    const hot = i % 2 === 0
    const flips = 1 + rnd(8)
    for (let k = 0; k < flips; k++) {
      const shoff = Number(base.readBigUInt64LE(40))
      const pos = hot ? (rnd(2) === 0 ? rnd(64 + 56 * 11) : shoff + rnd(base.length - shoff)) : rnd(b.length)
      b[pos] = rnd(256)
    }
    try { parseElf(b); parsed++ } catch (err) {
      if (code(err) === 'ERR_NOT_ELF') rejected++
      else bad.push(String(err))
    }
    const c = elfCompleteness(b)
    if (typeof c.complete !== 'boolean') bad.push('completeness without a boolean')
  }
  t.same(bad.slice(0, 5), [], 'only ERR_NOT_ELF')
  t.ok(parsed > 0 && rejected > 0, `some parsed (${parsed}), some rejected (${rejected})`)
})

t.test('another machine: ERR_WRONG_ARCH', async t => {
  const dir = t.testdir({})
  const b = fs.readFileSync(fx('plain.so'))
  b.writeUInt16LE(183, 18) // EM_AARCH64
  const file = path.join(dir, 'plain-aarch64.so')
  fs.writeFileSync(file, b)
  const info = readElfSync(file)
  t.equal(info.machine, 183)
  t.equal(info.machineName, 'AArch64')
  t.match(truth(file).machineLine, /AArch64/, 'readelf agrees')
  t.same(info.exports, ['plain_answer', 'plain_name'], 'still readable')
  t.throws(() => checkHostCompatible(info), { code: 'ERR_WRONG_ARCH', path: file, message: /AArch64/ })
  t.equal(machineName(62), 'x86-64')
  t.equal(machineName(4242), 'EM_4242')
  // Class and byte order matter as much as e_machine.
  const host = hostElf()
  const plain = readElfSync(fx('plain.so'))
  t.throws(() => checkHostCompatible({ ...plain, class: host.class === 64 ? 32 : 64 }), { code: 'ERR_WRONG_ARCH' })
  t.throws(() => checkHostCompatible({ ...plain, endian: host.endian === 'le' ? 'be' : 'le' }), { code: 'ERR_WRONG_ARCH' })
})

t.test('not a shared object: ERR_NOT_ELF from checkHostCompatible', async t => {
  const plain = readElfSync(fx('plain.so'))
  t.throws(() => checkHostCompatible({ ...plain, type: 'ET_EXEC' }, '/x'), { code: 'ERR_NOT_ELF', path: '/x' })
  t.throws(() => checkHostCompatible({ ...plain, type: 'ET_REL' }), { code: 'ERR_NOT_ELF' })
  t.throws(() => checkHostCompatible({ ...plain, pie: true }), { code: 'ERR_NOT_ELF', message: /position-independent executable/ })
})

t.test('a big file (node itself, > 64 MiB) is read piecewise and agrees with readelf', async t => {
  const exe = fs.realpathSync(process.execPath)
  const info = readElfSync(exe)
  const r = truth(exe)
  t.equal(info.type, r.type)
  t.equal(info.class, r.class)
  t.same(info.needed, r.needed)
  t.same(info.exports.length, r.exports.length, 'same number of exports')
  t.ok(info.exports.includes('napi_create_object'), 'N-API is exported')
  t.same(await readElfFile(exe), info)
  t.throws(() => checkHostCompatible(info), { code: 'ERR_NOT_ELF' }, 'an executable is not a library')
})

t.test('32-bit little-endian shared object from the compiler, when it can make one', async t => {
  const dir = t.testdir({ 'x.c': 'int f32(void) { return 1; }\nint v32 = 3;\n' })
  const file = path.join(dir, 'x32.so')
  const cc = spawnSync(process.env.CC ?? 'cc', ['-m32', '-fPIC', '-shared', '-nostdlib', '-Wl,-soname,libx32.so', '-o', file, path.join(dir, 'x.c')], { stdio: 'ignore' })
  if (cc.status !== 0) { t.plan(0, 'cc -m32 cannot link here'); return }
  const info = readElfSync(file)
  assertMatchesReadelf(t, info, file)
  t.equal(info.class, 32)
  t.same(info.exports, ['f32', 'v32'])
  t.equal(info.soname, 'libx32.so')
  if (process.arch === 'x64') t.throws(() => checkHostCompatible(info), { code: 'ERR_WRONG_ARCH' })
})

t.test('synthetic images: ELF32/ELF64, big/little endian, with and without section headers', async t => {
  const dir = t.testdir({})
  for (const is64 of [false, true]) {
    for (const le of [false, true]) {
      for (const sections of [true, false]) {
        const name = `elf${is64 ? 64 : 32}-${le ? 'le' : 'be'}${sections ? '' : '-nosections'}`
        await t.test(name, async t => {
          const buf = synthElf({
            is64,
            le,
            machine: le ? 183 : 22,
            sections,
            tls: true,
            needed: ['libc.so.6', 'libm.so.6'],
            soname: 'libsynth.so.1',
            flags1: 0x8,
            syms: SYNTH_SYMS
          })
          const file = path.join(dir, name + '.so')
          fs.writeFileSync(file, buf)
          t.same(elfCompleteness(buf), { complete: true })
          const info = parseElf(buf, file)
          t.equal(info.class, is64 ? 64 : 32)
          t.equal(info.endian, le ? 'le' : 'be')
          t.equal(info.machineName, le ? 'AArch64' : 'S/390')
          t.equal(info.symbolSource, sections ? 'sections' : 'dynamic')
          t.same(info.needed, ['libc.so.6', 'libm.so.6'])
          t.equal(info.soname, 'libsynth.so.1')
          t.equal(info.nodelete, true)
          t.equal(info.tls, true)
          t.same(info.exports, ['dlhost_handle', 'plugin_table', 'static_counter', 'weak_hook'])
          t.same(info.imports, ['__cxa_thread_atexit_impl', 'malloc'])
          t.same(info.gnuUnique, ['static_counter'])
          t.equal(info.threadAtexit, true)
          t.same(stuckReasons(info), ['NODELETE', 'GNU_UNIQUE', 'TLS destructors pending'])
          t.same(detectAbi(info), { abi: 'host', entry: 'dlhost_handle' })
          if (sections) assertMatchesReadelf(t, info, file) // readelf's --dyn-syms needs the sections to agree on names
          else {
            const r = truth(file)
            t.same([info.class, info.endian, info.needed, info.soname, info.nodelete], [r.class, r.endian, r.needed, r.soname, r.nodelete], 'readelf agrees on the dynamic section')
          }
          t.throws(() => checkHostCompatible(info), { code: 'ERR_WRONG_ARCH' })
          // Truncations of synthetic images are caught too.
          for (const len of [buf.length - 1, Math.floor(buf.length / 2), 20]) {
            const c = elfCompleteness(buf.subarray(0, len))
            t.equal(c.complete, false, `cut at ${len} of ${buf.length}: ${String(c.reason)}`)
          }
        })
      }
    }
  }
})

t.test('stripped section headers: symbols via PT_DYNAMIC and DT_GNU_HASH', async t => {
  for (const name of ['plain.so', 'tls.so', 'unique.so']) {
    const full = fs.readFileSync(fx(name))
    const withSections = parseElf(full)
    const b = Buffer.from(full)
    b.writeBigUInt64LE(0n, 40) // e_shoff
    b.writeUInt16LE(0, 60) // e_shnum
    b.writeUInt16LE(0, 62) // e_shstrndx
    const info = parseElf(b)
    t.equal(info.symbolSource, 'dynamic', `${name}: fallback used`)
    t.same(info.exports, withSections.exports, `${name}: same exports`)
    t.same(info.imports, withSections.imports, `${name}: same imports`)
    t.same(info.gnuUnique, withSections.gnuUnique, `${name}: same GNU_UNIQUE`)
    t.same(info.needed, withSections.needed, `${name}: same DT_NEEDED`)
    t.same(stuckReasons(info), stuckReasons(withSections), `${name}: same reasons`)
  }
})

t.test('files: errors and completeness', async t => {
  const dir = t.testdir({ 'text.txt': 'just text\n', 'empty.so': '', sub: {} })
  await t.rejects(readElfFile(path.join(dir, 'missing.so')), { code: 'ERR_NOT_FOUND' })
  await t.rejects(readElfFile(path.join(dir, 'missing.so')), { code: 'ERR_NOT_FOUND' })
  await t.rejects(readElfFile(path.join(dir, 'text.txt', 'x.so')), { code: 'ERR_NOT_FOUND' }, 'a file as a directory')
  await t.rejects(readElfFile(path.join(dir, 'sub')), { code: 'ERR_IS_DIRECTORY' })
  await t.rejects(readElfFile(path.join(dir, 'sub')), { code: 'ERR_IS_DIRECTORY' })
  await t.rejects(readElfFile(path.join(dir, 'text.txt')), { code: 'ERR_NOT_ELF' })
  await t.rejects(readElfFile(path.join(dir, 'empty.so')), { code: 'ERR_NOT_ELF', reason: /empty/ })
  await t.rejects(readElfFile('/dev/null'), { code: 'ERR_NOT_ELF', reason: /regular/ }, 'a device')
  await t.rejects(readElfFile(42 as unknown as string), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  await t.rejects(readElfFile(''), { code: 'ERR_INVALID_ARG' })
  await t.rejects(readElfFile('a\0b'), { code: 'ERR_INVALID_ARG' })
  const fifo = path.join(dir, 'fifo')
  if (spawnSync('mkfifo', [fifo]).status === 0) {
    await t.rejects(readElfFile(fifo), { code: 'ERR_NOT_ELF' }, 'a FIFO neither blocks nor parses')
  }
  if (process.getuid?.() !== 0) {
    const locked = path.join(dir, 'locked.so')
    fs.copyFileSync(fx('plain.so'), locked)
    fs.chmodSync(locked, 0)
    await t.rejects(readElfFile(locked), { code: 'ERR_ACCESS' })
  }
  t.same(elfCompleteness(fs.readFileSync(fx('plain.so'))), { complete: true })
  const half = path.join(dir, 'half.so')
  const full = fs.readFileSync(fx('tls.so'))
  fs.writeFileSync(half, full.subarray(0, full.length >> 1))
  t.match(elfCompleteness(fs.readFileSync(half)), { complete: false, reason: /truncated|outside/ })
  fs.appendFileSync(half, full.subarray(full.length >> 1))
  t.same(elfCompleteness(fs.readFileSync(half)), { complete: true }, 'complete once the rest is written')
})

t.test('loader safety: corruptions that crash ld.so are refused before dlopen', { skip: process.arch !== 'x64' && 'x86-64 layout' }, async t => {
  const good = fs.readFileSync(path.join(__dirname, '..', 'examples', 'out', 'libecho_host.so'))
  t.doesNotThrow(() => parseElf(good), 'the original parses')
  const phoff = Number(good.readBigUInt64LE(32))
  const phnum = good.readUInt16LE(56)
  const phdr = (type: number): number => {
    for (let i = 0; i < phnum; i++) if (good.readUInt32LE(phoff + i * 56) === type) return phoff + i * 56
    throw new Error(`no phdr ${type}`)
  }
  const dynOff = Number(good.readBigUInt64LE(phdr(2) + 8))
  const dynEntry = (tag: number): number => {
    for (let o = dynOff; ; o += 16) {
      const k = Number(good.readBigUInt64LE(o))
      if (k === tag) return o
      if (k === 0) throw new Error(`no dynamic tag ${tag}`)
    }
  }
  const rela = Number(good.readBigUInt64LE(dynEntry(7) + 8)) // DT_RELA vaddr == file offset in this layout
  const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
    ['PT_GNU_RELRO outside every segment', b => b.writeBigUInt64LE(0x7fff0000n, phdr(0x6474e552) + 16), /PT_GNU_RELRO/],
    ['DT_PLTREL that is not DT_RELA', b => b.writeBigUInt64LE(17n, dynEntry(20) + 8), /DT_PLTREL/],
    ['DT_INIT_ARRAY without its size', b => b.writeBigUInt64LE(0x840000000000001bn, dynEntry(27)), /DT_INIT_ARRAY/],
    ['a relocation writing outside the image', b => b.writeBigUInt64LE(0x7fff0000n, rela), /relocation writes/],
    ['a segment alignment that is not a power of two', b => b.writeBigUInt64LE(0x80000001000n, phdr(1) + 48), /power of two/],
    ['DT_SYMTAB off its section', b => b.writeBigUInt64LE(BigInt(Number(good.readBigUInt64LE(dynEntry(6) + 8)) + 8), dynEntry(6) + 8), /DT_SYMTAB/]
  ]
  for (const [what, patch, reason] of cases) {
    const b = Buffer.from(good)
    patch(b)
    t.throws(() => parseElf(b, 'mutant.so'), { code: 'ERR_NOT_ELF', reason }, what)
  }
})
