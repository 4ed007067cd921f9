/**
 * A build: a private copy of the user's file, parsed and checked once. Each
 * check a reload makes of a new build lives here and runs once per build:
 * the ELF parse, "this process can load it", the ABI of its entry symbol,
 * and "same ABI as the version serving". JS thread only.
 */
import { ElfInfo, parseElf } from '../elf'
import { DlhostError } from '../errors'
import { Abi, checkHostCompatible, detectAbi, ENTRY, noEntryError } from '../rules'
import { CopyStore, PrivateCopy } from './copies'

export interface Build {
  copy: PrivateCopy
  elf: ElfInfo
  /** The ABI it will be loaded with (the one asked for, else the detected one). */
  abi: Abi
}

/** Parses the copy and checks that this process can load it; removes the copy if not. */
export function parseBuild (store: CopyStore, copy: PrivateCopy, path: string, asked: Abi | undefined): Build {
  try {
    const elf = parseElf(copy.bytes, path)
    checkHostCompatible(elf, path)
    const { abi } = detectAbi(elf)
    if (abi === null) throw noEntryError(path, elf.exports)
    if (asked !== undefined && !elf.exports.includes(ENTRY[asked])) throw noEntryError(path, elf.exports, [ENTRY[asked]])
    return { copy, elf, abi: asked ?? abi }
  } catch (err) {
    void store.remove(copy.path).catch(() => {})
    throw err
  }
}

/** The new build must speak the serving version's ABI; removes the copy if not. */
export function checkSameAbi (store: CopyStore, build: Build, serving: Abi, path: string): void {
  if (build.abi === serving) return
  void store.remove(build.copy.path).catch(() => {})
  throw new DlhostError('ERR_SYMBOL_MISSING',
    `${path}: the new build's entry is ${ENTRY[build.abi]} (${build.abi}), the running one is ${serving}`, { path })
}
