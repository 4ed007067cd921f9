/**
 * A small, pure-TypeScript ELF reader: just the facts dlhost needs to decide
 * whether a shared object can be loaded by this process and whether dlclose
 * can really take it out again. ELF32 and ELF64, little and big endian.
 *
 * Robustness rules (every byte here may come from a half-written or hostile
 * file): every offset is checked against the file size before it is read, a
 * structural problem (truncated header or table, a section or segment that
 * lies outside the file, a dynamic table that points outside the file) is an
 * `ERR_NOT_ELF`, and nothing here can throw anything else for bad input.
 * Lenient where the loader is lenient: a symbol name offset past its string
 * table reads as '' rather than failing the whole file.
 */
import * as fs from 'fs'
import { DlhostError, errnoError, notRegularError } from './errors'
import { checkPath } from './options'

export type ElfType = 'ET_NONE' | 'ET_REL' | 'ET_EXEC' | 'ET_DYN' | 'ET_CORE' | `ET_0x${string}`

/** Static facts about one ELF file. */
export interface ElfInfo {
  /** The file this was read from, when known. */
  path?: string
  class: 32 | 64
  endian: 'le' | 'be'
  type: ElfType
  /** e_machine (EM_X86_64 = 62, EM_AARCH64 = 183, ...). */
  machine: number
  /** A readable name of `machine`: 'x86-64', 'AArch64', ... (`EM_<n>` when unknown). */
  machineName: string
  /** DT_SONAME. */
  soname?: string
  /** DT_NEEDED entries, in order. */
  needed: string[]
  /** DT_FLAGS_1 & DF_1_NODELETE: dlclose never unmaps it (`-z nodelete`). */
  nodelete: boolean
  /** DT_FLAGS_1 & DF_1_PIE: a position-independent executable (glibc refuses to dlopen it). */
  pie: boolean
  /** DT_FLAGS & DF_STATIC_TLS: uses initial-exec TLS, which takes from the small static TLS surplus. */
  staticTls: boolean
  /** Defined dynamic symbols with binding STB_GNU_UNIQUE (sorted). */
  gnuUnique: string[]
  /** The object has a PT_TLS segment (thread_local / __thread data). */
  tls: boolean
  /** Imports `__cxa_thread_atexit_impl` or `__cxa_thread_atexit` (thread_local destructors). */
  threadAtexit: boolean
  /** Carries a Go runtime (Go c-shared / c-archive linked in). */
  goRuntime: boolean
  /** Defined global/weak/unique dynamic FUNC, OBJECT, IFUNC or COMMON symbols (sorted, unique). */
  exports: string[]
  /** Undefined dynamic symbols, without version suffixes (sorted, unique). */
  imports: string[]
  /** Where the dynamic symbols were read from: the section headers, PT_DYNAMIC (stripped section headers), or nowhere. */
  symbolSource: 'sections' | 'dynamic' | 'none'
}

export interface ElfCompleteness {
  complete: boolean
  reason?: string
}

// ─── constants ────────────────────────────────────────────────────────────

const PT_LOAD = 1
const PT_DYNAMIC = 2
const PT_TLS = 7

const SHT_NULL = 0
const SHT_SYMTAB = 2
const SHT_STRTAB = 3
const SHT_DYNAMIC = 6
const SHT_NOBITS = 8
const SHT_DYNSYM = 11

const SHN_UNDEF = 0
const SHN_ABS = 0xfff1
const SHN_XINDEX = 0xffff
const PN_XNUM = 0xffff

const DT_NULL = 0
const DT_NEEDED = 1
const DT_HASH = 4
const DT_STRTAB = 5
const DT_SYMTAB = 6
const DT_STRSZ = 10
const DT_SYMENT = 11
const DT_SONAME = 14
const DT_FLAGS = 30
const DT_GNU_HASH = 0x6ffffef5
const DT_FLAGS_1 = 0x6ffffffb

const DF_STATIC_TLS = 0x10
const DF_1_NODELETE = 0x8
const DF_1_PIE = 0x08000000

const STB_LOCAL = 0
const STB_GLOBAL = 1
const STB_WEAK = 2
const STB_GNU_UNIQUE = 10

const STT_OBJECT = 1
const STT_FUNC = 2
const STT_COMMON = 5
const STT_GNU_IFUNC = 10

const STV_INTERNAL = 1
const STV_HIDDEN = 2

const ET_NAMES: Record<number, ElfType> = { 0: 'ET_NONE', 1: 'ET_REL', 2: 'ET_EXEC', 3: 'ET_DYN', 4: 'ET_CORE' }

const MACHINE_NAMES: Record<number, string> = {
  0: 'none',
  2: 'SPARC',
  3: 'x86',
  4: 'M68K',
  8: 'MIPS',
  15: 'PA-RISC',
  20: 'PowerPC',
  21: 'PowerPC64',
  22: 'S/390',
  40: 'ARM',
  42: 'SuperH',
  43: 'SPARC V9',
  50: 'IA-64',
  62: 'x86-64',
  183: 'AArch64',
  243: 'RISC-V',
  247: 'BPF',
  258: 'LoongArch'
}

/** Whole files up to this size are read into memory; larger ones are read piecewise. */
const WHOLE_READ_LIMIT = 64 * 1024 * 1024
/** A .symtab (only used to spot a Go runtime) larger than this is not scanned. */
const SYMTAB_SCAN_LIMIT = 64 * 1024 * 1024

/** A readable name for an e_machine value. */
export function machineName (machine: number): string {
  return MACHINE_NAMES[machine] ?? `EM_${machine}`
}

// ─── byte sources ─────────────────────────────────────────────────────────

/** Random access to the bytes of a file; `read` is only called with in-range offsets. */
interface Source {
  readonly size: number
  read (off: number, len: number): Buffer
}

class BufferSource implements Source {
  constructor (private readonly buf: Buffer) {}
  get size (): number { return this.buf.length }
  read (off: number, len: number): Buffer { return this.buf.subarray(off, off + len) }
}

/** A source over an open fd, for files too big to read whole. */
class FdSource implements Source {
  constructor (private readonly fd: number, readonly size: number) {}
  read (off: number, len: number): Buffer {
    const b = Buffer.allocUnsafe(len)
    let got = 0
    while (got < len) {
      const n = fs.readSync(this.fd, b, got, len - got, off + got)
      if (n === 0) break
      got += n
    }
    if (got < len) throw new Malformed('the file shrank while it was being read')
    return b
  }
}

/** Internal: a structural problem; becomes ERR_NOT_ELF (or complete=false). */
class Malformed extends Error {}

// ─── low-level decoding ───────────────────────────────────────────────────

class Reader {
  constructor (readonly b: Buffer, readonly le: boolean, readonly is64: boolean) {}
  u8 (o: number): number { return this.b.readUInt8(o) }
  u16 (o: number): number { return this.le ? this.b.readUInt16LE(o) : this.b.readUInt16BE(o) }
  u32 (o: number): number { return this.le ? this.b.readUInt32LE(o) : this.b.readUInt32BE(o) }
  u64 (o: number): number {
    // Two 32-bit halves (a BigInt per read made parsing ~2x slower). Values
    // past 2^53 lose precision, but any such offset/size is far outside any file.
    const lo = this.le ? this.b.readUInt32LE(o) : this.b.readUInt32BE(o + 4)
    const hi = this.le ? this.b.readUInt32LE(o + 4) : this.b.readUInt32BE(o)
    return hi * 0x100000000 + lo
  }

  /** An address/offset/size-sized word (Elf32_Addr / Elf64_Addr). */
  word (o: number): number { return this.is64 ? this.u64(o) : this.u32(o) }
}

interface Header {
  is64: boolean
  le: boolean
  type: number
  machine: number
  phoff: number
  phentsize: number
  phnum: number
  shoff: number
  shentsize: number
  shnum: number
  shstrndx: number
}

interface Phdr { type: number, flags: number, offset: number, vaddr: number, filesz: number, memsz: number, align: number }
interface Shdr { nameOff: number, name: string, type: number, offset: number, size: number, link: number, entsize: number, addr: number }

interface Layout { h: Header, ph: Phdr[], sh: Shdr[] }

const PT_NAMES: Record<number, string> = { 0: 'PT_NULL', 1: 'PT_LOAD', 2: 'PT_DYNAMIC', 3: 'PT_INTERP', 4: 'PT_NOTE', 6: 'PT_PHDR', 7: 'PT_TLS' }

function inside (off: number, len: number, size: number): boolean {
  return Number.isFinite(off) && Number.isFinite(len) && off >= 0 && len >= 0 && off <= size && len <= size - off
}

function cstr (tab: Buffer, off: number): string {
  if (off < 0 || off >= tab.length) return ''
  let end = tab.indexOf(0, off)
  if (end < 0) end = tab.length
  return tab.toString('utf8', off, end)
}

/**
 * Reads and checks the file's structure: ELF header, program header table,
 * section header table, and that every section and segment lies inside the file.
 * Throws Malformed with a readable reason.
 */
function layout (src: Source): Layout {
  const size = src.size
  if (size === 0) throw new Malformed('empty file')
  const ident = src.read(0, Math.min(16, size))
  const magic = [0x7f, 0x45, 0x4c, 0x46]
  for (let i = 0; i < Math.min(4, ident.length); i++) {
    if (ident[i] !== magic[i]) throw new Malformed('not an ELF file (bad magic)')
  }
  if (size < 16) throw new Malformed(`truncated ELF header (${size} of at least 16 bytes)`)
  const cls = ident[4]
  const data = ident[5]
  if (cls !== 1 && cls !== 2) throw new Malformed(`bad EI_CLASS ${String(cls)}`)
  if (data !== 1 && data !== 2) throw new Malformed(`bad EI_DATA ${String(data)}`)
  if (ident[6] !== 1) throw new Malformed(`bad EI_VERSION ${String(ident[6])}`)
  const is64 = cls === 2
  const le = data === 1
  const ehsize = is64 ? 64 : 52
  if (size < ehsize) throw new Malformed(`truncated ELF header (${size} of ${ehsize} bytes)`)
  const r = new Reader(src.read(0, ehsize), le, is64)
  const h: Header = is64
    ? {
        is64,
        le,
        type: r.u16(16),
        machine: r.u16(18),
        phoff: r.u64(32),
        shoff: r.u64(40),
        phentsize: r.u16(54),
        phnum: r.u16(56),
        shentsize: r.u16(58),
        shnum: r.u16(60),
        shstrndx: r.u16(62)
      }
    : {
        is64,
        le,
        type: r.u16(16),
        machine: r.u16(18),
        phoff: r.u32(28),
        shoff: r.u32(32),
        phentsize: r.u16(42),
        phnum: r.u16(44),
        shentsize: r.u16(46),
        shnum: r.u16(48),
        shstrndx: r.u16(50)
      }

  const shMin = is64 ? 64 : 40
  const phMin = is64 ? 56 : 32

  // The program header table comes first in the file (so a truncation is reported as
  // such), unless extended numbering keeps its count in section 0.
  const ph: Phdr[] = []
  const readPh = (): void => {
    if (h.phnum === 0) return
    if (h.phentsize < phMin) throw new Malformed(`bad e_phentsize ${h.phentsize} (need ${phMin})`)
    const tableLen = h.phnum * h.phentsize
    if (!inside(h.phoff, tableLen, size)) {
      throw new Malformed(`truncated program header table (${h.phnum} entries at ${h.phoff}..${h.phoff + tableLen}, file has ${size} bytes)`)
    }
    const t = new Reader(src.read(h.phoff, tableLen), le, is64)
    for (let i = 0; i < h.phnum; i++) {
      const o = i * h.phentsize
      ph.push(is64
        ? { type: t.u32(o), flags: t.u32(o + 4), offset: t.u64(o + 8), vaddr: t.u64(o + 16), filesz: t.u64(o + 32), memsz: t.u64(o + 40), align: t.u64(o + 48) }
        : { type: t.u32(o), flags: t.u32(o + 24), offset: t.u32(o + 4), vaddr: t.u32(o + 8), filesz: t.u32(o + 16), memsz: t.u32(o + 20), align: t.u32(o + 28) })
    }
  }
  const phExtended = h.phnum === PN_XNUM
  if (!phExtended) readPh()

  // Section header table.
  const sh: Shdr[] = []
  if (h.shoff !== 0) {
    if (h.shentsize < shMin) throw new Malformed(`bad e_shentsize ${h.shentsize} (need ${shMin})`)
    if (!inside(h.shoff, h.shentsize, size)) throw new Malformed(`truncated section header table (starts at ${h.shoff}, file has ${size} bytes)`)
    const s0 = new Reader(src.read(h.shoff, h.shentsize), le, is64)
    if (h.shnum === 0) h.shnum = is64 ? s0.u64(32) : s0.u32(20)
    if (h.shstrndx === SHN_XINDEX) h.shstrndx = is64 ? s0.u32(40) : s0.u32(24)
    if (phExtended) h.phnum = is64 ? s0.u32(44) : s0.u32(28)
    const tableLen = h.shnum * h.shentsize
    if (!inside(h.shoff, tableLen, size)) {
      throw new Malformed(`truncated section header table (${h.shnum} entries at ${h.shoff}..${h.shoff + tableLen}, file has ${size} bytes)`)
    }
    const t = new Reader(src.read(h.shoff, tableLen), le, is64)
    for (let i = 0; i < h.shnum; i++) {
      const o = i * h.shentsize
      sh.push(is64
        ? { nameOff: t.u32(o), name: '', type: t.u32(o + 4), addr: t.u64(o + 16), offset: t.u64(o + 24), size: t.u64(o + 32), link: t.u32(o + 40), entsize: t.u64(o + 56) }
        : { nameOff: t.u32(o), name: '', type: t.u32(o + 4), addr: t.u32(o + 12), offset: t.u32(o + 16), size: t.u32(o + 20), link: t.u32(o + 24), entsize: t.u32(o + 36) })
    }
  } else if (h.shnum !== 0) {
    throw new Malformed(`e_shnum is ${h.shnum} but there is no section header table`)
  }

  if (phExtended) {
    if (sh.length === 0) throw new Malformed('e_phnum is PN_XNUM but there is no section 0 to hold the count')
    readPh()
  }

  // Every section's and segment's bytes must be in the file.
  sh.forEach((s, i) => {
    if (s.type === SHT_NULL || s.type === SHT_NOBITS || s.size === 0) return
    if (!inside(s.offset, s.size, size)) {
      throw new Malformed(`section ${i} (type ${s.type}) at ${s.offset}..${s.offset + s.size} lies outside the file (${size} bytes)`)
    }
  })
  ph.forEach((p, i) => {
    if (p.filesz === 0) return
    if (!inside(p.offset, p.filesz, size)) {
      const name = PT_NAMES[p.type] ?? `type 0x${p.type.toString(16)}`
      throw new Malformed(`segment ${i} (${name}) at ${p.offset}..${p.offset + p.filesz} lies outside the file (${size} bytes)`)
    }
  })

  // Section names.
  if (sh.length > 0 && h.shstrndx !== 0) {
    const strSec = sh[h.shstrndx]
    if (strSec === undefined) throw new Malformed(`e_shstrndx ${h.shstrndx} is past the ${sh.length} sections`)
    if (strSec.type !== SHT_STRTAB) throw new Malformed(`e_shstrndx ${h.shstrndx} does not name a string table`)
    const names = src.read(strSec.offset, strSec.size)
    for (const s of sh) s.name = cstr(names, s.nameOff)
  }
  // Symbol tables must point at string tables (a zero-filled, half-written table would not).
  sh.forEach((s, i) => {
    if (s.type !== SHT_DYNSYM && s.type !== SHT_SYMTAB && s.type !== SHT_DYNAMIC) return
    const link = sh[s.link]
    if (link === undefined || link.type !== SHT_STRTAB) throw new Malformed(`section ${i} (${s.name || 'type ' + String(s.type)}) links to no string table`)
  })
  return { h, ph, sh }
}

// ─── the analysis ─────────────────────────────────────────────────────────

interface Sym { name: string, nameOff: number, bind: number, type: number, vis: number, shndx: number, value: number, size: number }

function readSymbols (src: Source, h: Header, off: number, count: number, entsize: number, strtab: Buffer): Sym[] {
  const out: Sym[] = []
  if (count <= 0) return out
  const ent = entsize >= (h.is64 ? 24 : 16) ? entsize : (h.is64 ? 24 : 16)
  if (!inside(off, count * ent, src.size)) throw new Malformed(`symbol table at ${off} (${count} entries) lies outside the file`)
  const r = new Reader(src.read(off, count * ent), h.le, h.is64)
  for (let i = 0; i < count; i++) {
    const o = i * ent
    const info = h.is64 ? r.u8(o + 4) : r.u8(o + 12)
    const other = h.is64 ? r.u8(o + 5) : r.u8(o + 13)
    const nameOff = r.u32(o)
    out.push({
      name: cstr(strtab, nameOff),
      nameOff,
      bind: info >> 4,
      type: info & 0xf,
      vis: other & 3,
      shndx: h.is64 ? r.u16(o + 6) : r.u16(o + 14),
      value: h.is64 ? r.u64(o + 8) : r.u32(o + 4),
      size: h.is64 ? r.u64(o + 16) : r.u32(o + 8)
    })
  }
  return out
}

function vaddrToOffset (ph: Phdr[], addr: number): number | undefined {
  for (const p of ph) {
    if (p.type === PT_LOAD && addr >= p.vaddr && addr < p.vaddr + p.filesz) return p.offset + (addr - p.vaddr)
  }
  return undefined
}

// ─── what the loader would trip over ──────────────────────────────────────
//
// A structurally whole file can still crash ld.so: a PT_GNU_RELRO outside
// every segment (SIGSEGV in _dl_protect_relro), a relocation that writes
// outside the image, a PLT relocation kind ld.so asserts on. These are the
// cheap checks that a shared object's layout is one glibc can load; what
// its code does (a corrupt constructor) only a probe load in another
// process can tell.

const PT_GNU_RELRO = 0x6474e552
const PF_X = 1
const PF_W = 2
const DT_PLTRELSZ = 2
const DT_RELA = 7
const DT_RELASZ = 8
const DT_RELAENT = 9
const DT_INIT = 12
const DT_FINI = 13
const DT_REL = 17
const DT_RELSZ = 18
const DT_RELENT = 19
const DT_PLTREL = 20
const DT_JMPREL = 23
const DT_INIT_ARRAY = 25
const DT_FINI_ARRAY = 26
const DT_INIT_ARRAYSZ = 27
const DT_FINI_ARRAYSZ = 28
const DT_PREINIT_ARRAY = 32
const DT_VERSYM = 0x6ffffff0
const DT_VERNEED = 0x6ffffffe
const DT_VERDEF = 0x6ffffffc
const DT_PLTGOT = 3
const MAX_RELOCS = 4_000_000

// (No bitwise test: JS bit operations cut a number to 32 bits.)
function powerOfTwo (x: number): boolean {
  return Number.isSafeInteger(x) && x > 0 && Number.isInteger(Math.log2(x))
}

function checkLoaderSafe (src: Source, h: Header, ph: Phdr[], sh: Shdr[], dyn: Array<[number, number]>, syms: Sym[]): void {
  const word = h.is64 ? 8 : 4
  const loads = ph.filter(p => p.type === PT_LOAD)
  if (loads.length === 0) throw new Malformed('no PT_LOAD segment')
  let prevEnd = -1
  for (const p of loads) {
    if (p.filesz > p.memsz) throw new Malformed(`a PT_LOAD segment has p_filesz ${p.filesz} > p_memsz ${p.memsz}`)
    if (p.align > 1 && !powerOfTwo(p.align)) throw new Malformed(`a PT_LOAD segment's alignment ${p.align} is not a power of two`)
    if (p.align > 1 && (p.vaddr - p.offset) % p.align !== 0) throw new Malformed('a PT_LOAD segment\'s address and offset disagree modulo its alignment')
    if (p.vaddr < prevEnd) throw new Malformed('PT_LOAD segments out of order or overlapping')
    if (!Number.isSafeInteger(p.vaddr + p.memsz) || p.vaddr + p.memsz > 2 ** 47) throw new Malformed('a PT_LOAD segment reaches past the address space')
    prevEnd = p.vaddr + p.memsz
  }
  const seg = (addr: number, len: number): Phdr | undefined =>
    loads.find(p => addr >= p.vaddr && len >= 0 && addr + len <= p.vaddr + p.memsz)
  const need = (what: string, addr: number, len: number, flags = 0): void => {
    const p = seg(addr, len)
    if (p === undefined) throw new Malformed(`${what} (0x${addr.toString(16)}, ${len} bytes) lies outside every PT_LOAD segment`)
    if ((p.flags & flags) !== flags) throw new Malformed(`${what} (0x${addr.toString(16)}) lies in a segment that is not ${flags === PF_X ? 'executable' : 'writable'}`)
  }
  for (const p of ph) {
    if (p.type === PT_DYNAMIC) need('PT_DYNAMIC', p.vaddr, p.memsz)
    else if (p.type === PT_GNU_RELRO) need('PT_GNU_RELRO', p.vaddr, p.memsz)
    else if (p.type === PT_TLS) {
      if (p.filesz > p.memsz) throw new Malformed('PT_TLS has p_filesz > p_memsz')
      if (p.align > 1 && !powerOfTwo(p.align)) throw new Malformed(`PT_TLS alignment ${p.align} is not a power of two`)
      if (p.filesz > 0) need('PT_TLS', p.vaddr, p.filesz)
    }
  }
  // The dynamic section's own section header, when there is one, inside a segment.
  const dynSec = sh.find(s => s.type === SHT_DYNAMIC)
  if (dynSec !== undefined && dynSec.addr !== 0) need('the .dynamic section', dynSec.addr, dynSec.size)
  const tag = (t: number): number | undefined => dyn.find(([k]) => k === t)?.[1]
  for (const [t, what] of [[DT_STRTAB, 'DT_STRTAB'], [DT_SYMTAB, 'DT_SYMTAB'], [DT_HASH, 'DT_HASH'], [DT_GNU_HASH, 'DT_GNU_HASH'],
    [DT_VERSYM, 'DT_VERSYM'], [DT_VERNEED, 'DT_VERNEED'], [DT_VERDEF, 'DT_VERDEF'], [DT_PLTGOT, 'DT_PLTGOT']] as const) {
    const v = tag(t)
    if (v !== undefined) need(what, v, t === DT_STRTAB ? tag(DT_STRSZ) ?? 1 : 1)
  }
  for (const [t, what, name] of [[DT_INIT, 'DT_INIT', '.init'], [DT_FINI, 'DT_FINI', '.fini']] as const) {
    const v = tag(t)
    if (v === undefined) continue
    need(what, v, 1, PF_X)
    const sec = sh.find(x => x.name === name)
    if (sec !== undefined && sec.addr !== 0 && sec.addr !== v) throw new Malformed(`${what} disagrees with the ${name} section`)
  }
  for (const [t, sz, what] of [[DT_INIT_ARRAY, DT_INIT_ARRAYSZ, 'DT_INIT_ARRAY'], [DT_FINI_ARRAY, DT_FINI_ARRAYSZ, 'DT_FINI_ARRAY']] as const) {
    const v = tag(t)
    if (v !== undefined) need(what, v, tag(sz) ?? 0)
  }
  if (tag(DT_PREINIT_ARRAY) !== undefined) throw new Malformed('DT_PREINIT_ARRAY in a shared object (glibc refuses it)')
  // Tags that only make sense together: ld.so dereferences the partner.
  for (const [a, b, what] of [[DT_INIT_ARRAY, DT_INIT_ARRAYSZ, 'DT_INIT_ARRAY/DT_INIT_ARRAYSZ'], [DT_FINI_ARRAY, DT_FINI_ARRAYSZ, 'DT_FINI_ARRAY/DT_FINI_ARRAYSZ'],
    [DT_RELA, DT_RELASZ, 'DT_RELA/DT_RELASZ'], [DT_REL, DT_RELSZ, 'DT_REL/DT_RELSZ'], [DT_JMPREL, DT_PLTRELSZ, 'DT_JMPREL/DT_PLTRELSZ'],
    [DT_JMPREL, DT_PLTREL, 'DT_JMPREL/DT_PLTREL'], [DT_SYMTAB, DT_STRTAB, 'DT_SYMTAB/DT_STRTAB'], [DT_STRTAB, DT_STRSZ, 'DT_STRTAB/DT_STRSZ']] as const) {
    if ((tag(a) === undefined) !== (tag(b) === undefined)) throw new Malformed(`${what}: one without the other`)
  }
  // Tables start where their entries can be read, and where the section
  // headers (when there are some) say they are.
  for (const [t, align, what] of [[DT_SYMTAB, word, 'DT_SYMTAB'], [DT_RELA, word, 'DT_RELA'], [DT_REL, word, 'DT_REL'], [DT_JMPREL, word, 'DT_JMPREL'],
    [DT_INIT_ARRAY, word, 'DT_INIT_ARRAY'], [DT_FINI_ARRAY, word, 'DT_FINI_ARRAY'], [DT_HASH, 4, 'DT_HASH'], [DT_GNU_HASH, word, 'DT_GNU_HASH'],
    [DT_VERSYM, 2, 'DT_VERSYM'], [DT_PLTGOT, word, 'DT_PLTGOT']] as const) {
    const v = tag(t)
    if (v !== undefined && v % align !== 0) throw new Malformed(`${what} (0x${v.toString(16)}) is not ${align}-byte aligned`)
  }
  const dynsymSec = sh.find(x => x.type === SHT_DYNSYM)
  if (dynsymSec !== undefined && dynsymSec.addr !== 0 && tag(DT_SYMTAB) !== undefined && tag(DT_SYMTAB) !== dynsymSec.addr) {
    throw new Malformed('DT_SYMTAB disagrees with the .dynsym section')
  }
  const dynstrSec = dynsymSec !== undefined ? sh[dynsymSec.link] : undefined
  if (dynstrSec !== undefined && dynstrSec.addr !== 0 && tag(DT_STRTAB) !== undefined && tag(DT_STRTAB) !== dynstrSec.addr) {
    throw new Malformed('DT_STRTAB disagrees with the .dynstr section')
  }
  const pltrel = tag(DT_PLTREL)
  if (pltrel !== undefined && pltrel !== DT_RELA && pltrel !== DT_REL) throw new Malformed(`DT_PLTREL is ${pltrel}, neither DT_RELA nor DT_REL`)
  if (h.machine === 62 && pltrel !== undefined && pltrel !== DT_RELA) throw new Malformed('DT_PLTREL is not DT_RELA on x86-64 (ld.so asserts on it)')
  const relaEnt = tag(DT_RELAENT)
  if (relaEnt !== undefined && relaEnt !== (h.is64 ? 24 : 12)) throw new Malformed(`DT_RELAENT is ${relaEnt}`)
  const relEnt = tag(DT_RELENT)
  if (relEnt !== undefined && relEnt !== (h.is64 ? 16 : 8)) throw new Malformed(`DT_RELENT is ${relEnt}`)

  // Every relocation writes inside a writable part of the image (or the
  // RELRO part, writable until relocation is done), names a symbol that
  // exists, and a relative one points into the image.
  const writable = (addr: number): boolean => {
    const p = seg(addr, word)
    if (p === undefined) return false
    if ((p.flags & PF_W) !== 0) return true
    return ph.some(r => r.type === PT_GNU_RELRO && addr >= r.vaddr && addr + word <= r.vaddr + r.memsz)
  }
  const tables: Array<[string, number | undefined, number | undefined, boolean]> = [
    ['DT_RELA', tag(DT_RELA), tag(DT_RELASZ), true],
    ['DT_REL', tag(DT_REL), tag(DT_RELSZ), false],
    ['DT_JMPREL', tag(DT_JMPREL), tag(DT_PLTRELSZ), pltrel !== DT_REL]
  ]
  const symCount = syms.length
  for (const [what, addr, size, rela] of tables) {
    if (addr === undefined || size === undefined || size === 0) continue
    const ent = rela ? (h.is64 ? 24 : 12) : (h.is64 ? 16 : 8)
    if (size % ent !== 0 || size / ent > MAX_RELOCS) throw new Malformed(`${what}: a size of ${size} bytes is not a whole number of entries`)
    const off = vaddrToOffset(ph, addr)
    if (off === undefined || !inside(off, size, src.size)) throw new Malformed(`${what} lies outside the file`)
    const r = new Reader(src.read(off, size), h.le, h.is64)
    for (let o = 0; o < size; o += ent) {
      const where = r.word(o)
      const info = r.word(o + word)
      const type = h.is64 ? info % 0x100000000 : info & 0xff
      const sym = h.is64 ? Math.floor(info / 0x100000000) : info >>> 8
      if (type === 0) continue // R_*_NONE
      if (!writable(where)) throw new Malformed(`${what}: a relocation writes at 0x${where.toString(16)}, outside the image's writable segments`)
      if (symCount > 0 && sym >= symCount) throw new Malformed(`${what}: a relocation names symbol ${sym} of ${symCount}`)
      if (rela && h.machine === 62 && (type === 8 || type === 37)) { // R_X86_64_RELATIVE, R_X86_64_IRELATIVE
        const addend = r.word(o + 2 * word)
        if (seg(addend, 0) === undefined) throw new Malformed(`${what}: a relative relocation points at 0x${addend.toString(16)}, outside the image`)
        if (type === 37) need(`${what}: an IFUNC resolver`, addend, 1, PF_X)
      }
    }
  }
  // Symbol names lie in the string table; defined functions start in executable code.
  const strsz = tag(DT_STRSZ)
  for (const sy of syms) {
    if (strsz !== undefined && sy.nameOff >= strsz) throw new Malformed(`a dynamic symbol's name (offset ${sy.nameOff}) lies past the string table (${strsz} bytes)`)
    if ((sy.type === STT_FUNC || sy.type === STT_GNU_IFUNC) && sy.shndx !== SHN_UNDEF && sy.shndx !== SHN_ABS && sy.value !== 0) {
      need(`function ${sy.name || '(unnamed)'}`, sy.value, 1, PF_X)
    }
  }
}

/** Number of symbols in a DT_GNU_HASH table: past the highest bucket's chain end. */
function gnuHashCount (src: Source, h: Header, off: number): number {
  const need = (o: number, n: number): Reader => {
    if (!inside(o, n, src.size)) throw new Malformed('DT_GNU_HASH table lies outside the file')
    return new Reader(src.read(o, n), h.le, h.is64)
  }
  const hd = need(off, 16)
  const nbuckets = hd.u32(0)
  const symoffset = hd.u32(4)
  const bloomSize = hd.u32(8)
  const bucketsOff = off + 16 + bloomSize * (h.is64 ? 8 : 4)
  const buckets = need(bucketsOff, nbuckets * 4)
  let max = 0
  for (let i = 0; i < nbuckets; i++) max = Math.max(max, buckets.u32(i * 4))
  if (max < symoffset) return symoffset
  const chains = bucketsOff + nbuckets * 4
  let i = max
  for (;;) {
    const c = need(chains + (i - symoffset) * 4, 4).u32(0)
    i++
    if ((c & 1) !== 0) return i
  }
}

function dynamicEntries (src: Source, h: Header, off: number, size: number): Array<[number, number]> {
  const ent = h.is64 ? 16 : 8
  const n = Math.floor(size / ent)
  const r = new Reader(src.read(off, n * ent), h.le, h.is64)
  const out: Array<[number, number]> = []
  for (let i = 0; i < n; i++) {
    const tag = r.word(i * ent)
    if (tag === DT_NULL) break
    out.push([tag, r.word(i * ent + (h.is64 ? 8 : 4))])
  }
  return out
}

const GO_SECTIONS = new Set(['.go.buildinfo', '.gopclntab', '.gosymtab', '.note.go.buildid', '.go.fuzzcntrs'])
const GO_SYMBOLS = new Set(['runtime.main', 'runtime.goexit', 'runtime.rt0_go', 'x_cgo_init', '_cgo_topofstack', 'crosscall2', '_cgo_panic', '_cgo_wait_runtime_init_done'])
function isGoSymbol (name: string): boolean {
  return GO_SYMBOLS.has(name) || name.startsWith('_cgo_') || name.startsWith('x_cgo_')
}

function analyze (src: Source, path?: string): ElfInfo {
  const { h, ph, sh } = layout(src)
  const info: ElfInfo = {
    class: h.is64 ? 64 : 32,
    endian: h.le ? 'le' : 'be',
    type: ET_NAMES[h.type] ?? `ET_0x${h.type.toString(16)}`,
    machine: h.machine,
    machineName: machineName(h.machine),
    needed: [],
    nodelete: false,
    pie: false,
    staticTls: false,
    gnuUnique: [],
    tls: ph.some(p => p.type === PT_TLS),
    threadAtexit: false,
    goRuntime: sh.some(s => GO_SECTIONS.has(s.name)),
    exports: [],
    imports: [],
    symbolSource: 'none'
  }
  if (path !== undefined) info.path = path

  // The dynamic array: the SHT_DYNAMIC section, else the PT_DYNAMIC segment.
  const dynSec = sh.find(s => s.type === SHT_DYNAMIC)
  const dynSeg = ph.find(p => p.type === PT_DYNAMIC)
  let dyn: Array<[number, number]> = []
  if (dynSec !== undefined) dyn = dynamicEntries(src, h, dynSec.offset, dynSec.size)
  else if (dynSeg !== undefined) dyn = dynamicEntries(src, h, dynSeg.offset, dynSeg.filesz)
  const tag = (t: number): number | undefined => dyn.find(([k]) => k === t)?.[1]

  const mapped = (what: string, addr: number, len: number): number => {
    const off = vaddrToOffset(ph, addr)
    if (off === undefined || !inside(off, len, src.size)) throw new Malformed(`${what} (0x${addr.toString(16)}) lies outside the file`)
    return off
  }

  // The dynamic string table.
  let dynstr: Buffer | undefined
  const linked = dynSec !== undefined ? sh[dynSec.link] : undefined
  if (linked !== undefined && linked.type === SHT_STRTAB) {
    dynstr = src.read(linked.offset, linked.size)
  } else {
    const strtab = tag(DT_STRTAB)
    const strsz = tag(DT_STRSZ)
    if (strtab !== undefined && strsz !== undefined) dynstr = src.read(mapped('DT_STRTAB', strtab, strsz), strsz)
    else if (dyn.some(([k]) => k === DT_NEEDED || k === DT_SONAME)) throw new Malformed('dynamic section names strings but has no DT_STRTAB/DT_STRSZ')
  }
  for (const [k, v] of dyn) {
    if (k === DT_NEEDED && dynstr !== undefined) info.needed.push(cstr(dynstr, v))
    else if (k === DT_SONAME && dynstr !== undefined) info.soname = cstr(dynstr, v)
    else if (k === DT_FLAGS_1) {
      if ((v & DF_1_NODELETE) !== 0) info.nodelete = true
      if ((v & DF_1_PIE) !== 0) info.pie = true
    } else if (k === DT_FLAGS && (v & DF_STATIC_TLS) !== 0) info.staticTls = true
  }

  // Dynamic symbols: .dynsym through the section headers, else DT_SYMTAB + a hash table for the count.
  let syms: Sym[] = []
  const dynsym = sh.find(s => s.type === SHT_DYNSYM)
  if (dynsym !== undefined) {
    const strSec = sh[dynsym.link] as Shdr // checked by layout()
    const ent = Math.max(dynsym.entsize, h.is64 ? 24 : 16)
    syms = readSymbols(src, h, dynsym.offset, Math.floor(dynsym.size / ent), ent, src.read(strSec.offset, strSec.size))
    info.symbolSource = 'sections'
  } else {
    const symtab = tag(DT_SYMTAB)
    if (symtab !== undefined && dynstr !== undefined) {
      const ent = Math.max(tag(DT_SYMENT) ?? 0, h.is64 ? 24 : 16)
      let count: number | undefined
      const hash = tag(DT_HASH)
      const gnuHash = tag(DT_GNU_HASH)
      if (gnuHash !== undefined) count = gnuHashCount(src, h, mapped('DT_GNU_HASH', gnuHash, 16))
      else if (hash !== undefined) count = new Reader(src.read(mapped('DT_HASH', hash, 8), 8), h.le, h.is64).u32(4)
      if (count !== undefined) {
        syms = readSymbols(src, h, mapped('DT_SYMTAB', symtab, count * ent), count, ent, dynstr)
        info.symbolSource = 'dynamic'
      }
    }
  }

  const exports = new Set<string>()
  const imports = new Set<string>()
  const unique = new Set<string>()
  for (const s of syms) {
    if (s.name === '' || s.bind === STB_LOCAL) continue
    const name = s.name.split('@')[0] as string
    if (s.shndx === SHN_UNDEF) {
      imports.add(name)
      continue
    }
    if (s.bind === STB_GNU_UNIQUE) unique.add(name)
    // Version-definition markers (ABS, value 0, size 0) are not symbols anyone can call.
    if (s.shndx === SHN_ABS && s.value === 0 && s.size === 0) continue
    if (s.vis === STV_HIDDEN || s.vis === STV_INTERNAL) continue
    if (s.bind !== STB_GLOBAL && s.bind !== STB_WEAK && s.bind !== STB_GNU_UNIQUE) continue
    if (s.type !== STT_FUNC && s.type !== STT_OBJECT && s.type !== STT_GNU_IFUNC && s.type !== STT_COMMON) continue
    exports.add(name)
  }
  info.exports = [...exports].sort()
  info.imports = [...imports].sort()
  info.gnuUnique = [...unique].sort()
  info.threadAtexit = imports.has('__cxa_thread_atexit_impl') || imports.has('__cxa_thread_atexit')
  if (!info.goRuntime) info.goRuntime = syms.some(s => isGoSymbol(s.name))
  if (!info.goRuntime) {
    // A static symbol table, when present and not huge, shows a Go runtime even without Go sections.
    const symtab = sh.find(s => s.type === SHT_SYMTAB)
    const strSec = symtab !== undefined ? sh[symtab.link] : undefined
    if (symtab !== undefined && strSec !== undefined && symtab.size + strSec.size <= SYMTAB_SCAN_LIMIT) {
      const ent = Math.max(symtab.entsize, h.is64 ? 24 : 16)
      const all = readSymbols(src, h, symtab.offset, Math.floor(symtab.size / ent), ent, src.read(strSec.offset, strSec.size))
      info.goRuntime = all.some(s => s.name === 'runtime.main' || s.name === 'x_cgo_init' || s.name === 'runtime.goexit')
    }
  }
  if (info.type === 'ET_DYN') checkLoaderSafe(src, h, ph, sh, dyn, syms)
  return info
}

function notElf (path: string | undefined, reason: string): DlhostError {
  return new DlhostError('ERR_NOT_ELF', `${path ?? 'buffer'}: not a usable ELF file: ${reason}`, { path, reason })
}

function run<T> (path: string | undefined, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof Malformed) throw notElf(path, err.message)
    if (err instanceof DlhostError) throw err
    // A RangeError from a Buffer read would mean a missed bounds check; still report it as a bad file.
    if (err instanceof RangeError) throw notElf(path, err.message)
    throw err
  }
}

// ─── public API ───────────────────────────────────────────────────────────

/** A Buffer view of a Buffer or any Uint8Array (no copy); undefined for anything else. */
function asBuffer (buf: unknown): Buffer | undefined {
  if (Buffer.isBuffer(buf)) return buf
  if (buf instanceof Uint8Array) return Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  return undefined
}

/**
 * Parses the ELF image in `buf`. Throws `DlhostError('ERR_NOT_ELF')` (with
 * `reason`) when it is empty, not ELF, truncated, or references bytes outside
 * the buffer; otherwise returns the facts.
 */
export function parseElf (buf: Buffer, path?: string): ElfInfo {
  const b = asBuffer(buf)
  if (b === undefined) throw notElf(path, 'not a Buffer')
  return run(path, () => analyze(new BufferSource(b), path))
}

/**
 * Is `buf` a complete ELF file? True when the ELF header, the program header
 * table, the section header table and every section's and segment's bytes lie
 * inside the buffer and parse. Never throws. Used to decide that a rebuilt
 * .so has been written completely: only the structure is checked (symbols
 * and the dynamic section are parseElf's), because this runs between "the
 * file settled" and the reload, and a structurally whole file that is
 * otherwise bad is a bad build to report, not one to wait for.
 */
export function elfCompleteness (buf: Buffer): ElfCompleteness {
  try {
    const b = asBuffer(buf)
    if (b === undefined) return { complete: false, reason: 'not a Buffer' }
    layout(new BufferSource(b))
    return { complete: true }
  } catch (err) {
    return { complete: false, reason: err instanceof DlhostError && err.reason !== undefined ? err.reason : String((err as Error)?.message ?? err) }
  }
}

function notRegular (path: string, st: fs.Stats): DlhostError | undefined {
  if (st.isDirectory()) return errnoError(Object.assign(new Error('is a directory'), { code: 'EISDIR' }), path)
  if (!st.isFile()) return notRegularError(path)
  return undefined
}

/**
 * Reads and parses an ELF file without blocking the event loop. Files up to
 * 64 MiB are read whole; bigger ones piecewise (headers, tables and the
 * dynamic sections only). Errors: ERR_NOT_FOUND, ERR_IS_DIRECTORY,
 * ERR_ACCESS, ERR_NOT_ELF (also for a non-regular file such as a FIFO or a
 * device); TypeError ERR_INVALID_ARG for an empty path or one with a NUL byte,
 * TypeError ERR_INVALID_ARG_TYPE for a non-string path.
 */
export async function readElfFile (path: string): Promise<ElfInfo> {
  checkPath(path)
  let fh: fs.promises.FileHandle
  try {
    fh = await fs.promises.open(path, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0))
  } catch (err) { throw errnoError(err, path) }
  try {
    let st: fs.Stats
    try { st = await fh.stat() } catch (err) { throw errnoError(err, path) }
    const bad = notRegular(path, st)
    if (bad !== undefined) throw bad
    if (st.size <= WHOLE_READ_LIMIT) {
      let buf: Buffer
      try { buf = await fh.readFile() } catch (err) { throw errnoError(err, path) }
      return parseElf(buf, path)
    }
    return run(path, () => analyze(new FdSource(fh.fd, st.size), path))
  } finally {
    await fh.close()
  }
}
