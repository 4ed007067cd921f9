// constants.h: layout, protocol constants and defaults shared by the native
// core and the TypeScript side. This file is their one home: addon.cc exports
// every one of them as `binding.constants`, and lib/binding.ts reads them
// from there (nothing here is restated in TypeScript).
#ifndef DLHOST_CONSTANTS_H
#define DLHOST_CONSTANTS_H

#include <cstddef>
#include <cstdint>

namespace dlhost {

// ---- slots: the JS side picks a slot and writes small requests into it
constexpr size_t kSlotStride = 128;              // inline request bytes per slot
constexpr size_t kSlotInline = kSlotStride - 1;  // + the NUL the ABI promises
constexpr uint32_t kChunkBits = 8;
constexpr uint32_t kChunkSlots = 1u << kChunkBits;  // slots per grow()

// ---- batches handed to JS: answers per callback; messages per callback,
// and their bytes (one message larger than that goes alone)
constexpr size_t kSettleChunk = 256;
constexpr size_t kMessageChunk = 1024;
constexpr size_t kMessageChunkBytes = 256 * 1024;

// ---- completion meta [id, rc, offset, length] sentinels
constexpr int32_t kAbortedLen = -1;      // length: never answered (threads gone)
constexpr int32_t kBigOffset = -2;       // offset: body handed over as its own Buffer
constexpr int32_t kTooLargeOffset = -3;  // offset: answer longer than a Buffer can be
// callSync meta [generation, offset, length, rc]: offset of a big answer
constexpr int32_t kSyncBigOffset = -1;
constexpr int32_t kSyncTooLargeOffset = -3;
// submit() result: the runtime is closed
constexpr int32_t kSubmitClosed = -2;

// ---- what a task asks (Task::kind): a call, or a state hand-over step run
// in queue order by whoever takes tasks (dlhost.h, "state across reloads")
enum TaskKind : uint32_t { kTaskCall = 0, kTaskStateExport = 1, kTaskStateImport = 2 };
// Messages (dlhost_emit): waiting for JS per runtime before emit refuses
// (DLHOST_EAGAIN), and the largest one (DLHOST_EINVAL beyond).
constexpr uint32_t kDefaultMaxMessages = 65536;
constexpr size_t kMaxMessageBytes = 1u << 20;
// Latency histograms (histogram.h): the layout JS reads.
constexpr int32_t kHistSubBits = 3;
constexpr int32_t kHistMinLog = 10;
constexpr int32_t kHistMaxLog = 42;
// The rc of a state step whose entry the plugin does not export.
constexpr int32_t kRcNoStateEntry = -0x7fff0001;

// ---- the plugin ABI a runtime drives (lib/rules.ts names them)
enum class Abi : int32_t { kHost = 0, kNative = 1, kLua = 2 };

// ---- open() flags
// kPrivate: a private copy in the process's own 0700 store (nobody else can
// rename over it), so the after-dlopen check of the mapping is skipped.
enum OpenFlags : uint32_t { kPin = 1, kGlobal = 2, kLazy = 4, kPrivate = 8 };

// ---- defaults
// Spin budget before parking. Waking a parked thread costs 25-50 us on the
// target VMs, a spinning one takes a task in well under 2 us: spinning about
// as long as a wake-up costs bounds the loss of either choice to 2x (the
// classic spin-then-block rule).
constexpr uint64_t kDefaultSpinNs = 50000;
constexpr uint32_t kDefaultMaxQueue = 65536;
constexpr uint32_t kMaxMaxQueue = 1u << 24;
constexpr uint32_t kDefaultUnloadTimeoutMs = 5000;
constexpr uint32_t kDefaultSettleMs = 50;  // the watcher's (TypeScript only)

}  // namespace dlhost

#endif  // DLHOST_CONSTANTS_H
