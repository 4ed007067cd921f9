// channel.h: the channel between a host and an isolated runtime's child
// process: one shared mapping (a memfd) holding two single-producer
// single-consumer byte rings of frames, requests (host -> child) and
// responses (child -> host), with futex event counts on the shared words.
// Any thread of either process; header-only, no N-API, no libuv.
//
// Who is what: the host's JS thread writes requests and reads responses;
// the child's reader thread reads requests and its writer thread writes
// responses. A side that finds nothing spins (up to a budget) then parks on
// the futex; the host side is woken through a pipe (its event loop polls
// it) and only when it is not spinning.
#ifndef DLHOST_CHANNEL_H
#define DLHOST_CHANNEL_H

#include <atomic>
#include <cstdint>
#include <cstring>

#include "histogram.h"
#include "queue.h"

namespace dlhost {

constexpr uint32_t kChannelMagic = 0xd1c4a11e;
constexpr uint32_t kChannelVersion = 1;
constexpr size_t kChannelHeader = 4096;

// Frame header, 16 bytes, then the payload, then padding to 8 bytes.
// Requests: {size, id, len, flags}; responses: {size, id, rc, len}.
struct FrameHeader {
  uint32_t size;  // header + payload + padding
  uint32_t id;
  uint32_t a;  // request: payload length; response: rc
  uint32_t b;  // request: flags;          response: payload length
};
constexpr uint32_t kControlId = 0xffffffffu;
// Request flags.
constexpr uint32_t kFrameMore = 1;          // the payload continues in the next frame of this id
constexpr uint32_t kFrameCfg = 2;           // control: the cfg (payload), once, first
constexpr uint32_t kFrameUnload = 4;        // control: unload gracefully
constexpr uint32_t kFrameStateExport = 8;   // this request is dlhost_state_export
constexpr uint32_t kFrameStateImport = 16;  // this request (the bytes) is dlhost_state_import
constexpr uint32_t kFrameCancel = 32;       // control: the caller gave up on call {u32 id}
constexpr uint32_t kFrameMessageFlow = 64;  // control: {u32 on}: forward messages or hold them
constexpr uint32_t kFrameStream = 128;      // this call is a stream; its reader's hwm in b >> 16
constexpr uint32_t kFrameStreamRead = 256;  // control: {u32 id, u32 n}: the reader took n chunks
// Response b (payload length) of a call the plugin never answered.
constexpr uint32_t kFrameAborted = 0xffffffffu;
// Response control kinds (in rc), with their payloads.
constexpr int32_t kEventInit = 1;  // {int32 rc, int32 failure, message bytes}
constexpr int32_t kEventUnloaded =
    2;  // {u8 dlclosed, u8 mapped, u8 threadsStuck, u8 0, u32 misuse, u32 aborted}
constexpr int32_t kEventMore = 3;     // response payload continues: {u32 id} then bytes
constexpr int32_t kEventMessage = 4;  // a plugin's dlhost_emit: the bytes
constexpr int32_t kEventChunk = 5;    // a stream chunk: {u32 id} then the bytes

// One ring: head and tail count bytes ever consumed / produced.
struct alignas(64) RingState {
  std::atomic<uint64_t> head{0};
  alignas(64) std::atomic<uint64_t> tail{0};
  alignas(64) BasicParker<true> items;  // the consumer parks here
  alignas(64) BasicParker<true> space;  // the producer parks here (child writer only)
};

struct ChannelShared {
  uint32_t magic;
  uint32_t version;
  uint64_t ring_bytes;  // each ring; a power of two
  RingState req;
  RingState rsp;
  // 1 while the host's JS thread spins on the response ring: the child then
  // skips the doorbell write (the host re-checks after it stops spinning).
  alignas(64) std::atomic<uint32_t> host_spinning{0};
  // Set by the child's crash handler: which limit it died of (1 memory,
  // 2 cpu, 3 files), 0 none known.
  std::atomic<int32_t> limit{0};
  // dlhost_emit calls the child refused (its message queue was full).
  std::atomic<uint64_t> messages_refused{0};
  // Service times of the child's calls (histogram.h's layout), written by
  // its channel thread; the host copies them out when it is asked.
  alignas(64) double service[LatencyHistogram::kLength];
};
static_assert(sizeof(ChannelShared) <= kChannelHeader, "header fits its page");

inline size_t ChannelBytes(uint64_t ring_bytes) { return kChannelHeader + 2 * ring_bytes; }
inline char *ReqData(ChannelShared *c) { return reinterpret_cast<char *>(c) + kChannelHeader; }
inline char *RspData(ChannelShared *c) { return ReqData(c) + c->ring_bytes; }

// Bytes at logical position pos of a ring of cap bytes (power of two), in
// up to two pieces.
inline void RingCopyIn(char *ring, uint64_t cap, uint64_t pos, const void *src, size_t n) {
  size_t at = size_t(pos & (cap - 1)), first = n < cap - at ? n : size_t(cap - at);
  memcpy(ring + at, src, first);
  if (n > first) memcpy(ring, static_cast<const char *>(src) + first, n - first);
}
inline void RingCopyOut(const char *ring, uint64_t cap, uint64_t pos, void *dst, size_t n) {
  size_t at = size_t(pos & (cap - 1)), first = n < cap - at ? n : size_t(cap - at);
  memcpy(dst, ring + at, first);
  if (n > first) memcpy(static_cast<char *>(dst) + first, ring, n - first);
}

inline uint32_t FrameSize(size_t payload) {
  return uint32_t((sizeof(FrameHeader) + payload + 7) & ~size_t(7));
}

// Producer: writes one frame if it fits; false otherwise (nothing written).
// Publishes with a release store of tail and wakes a parked consumer.
inline bool RingWrite(RingState &r, char *data, uint64_t cap, FrameHeader h, const void *payload,
                      size_t n) {
  h.size = FrameSize(n);
  uint64_t tail = r.tail.load(std::memory_order_relaxed);
  uint64_t head = r.head.load(std::memory_order_acquire);
  if (tail + h.size - head > cap) return false;
  RingCopyIn(data, cap, tail, &h, sizeof h);
  if (n) RingCopyIn(data, cap, tail + sizeof h, payload, n);
  r.tail.store(tail + h.size, std::memory_order_seq_cst);
  r.items.notify_all();  // no syscall unless the consumer is parked
  return true;
}

// Producer, batched: writes one frame at *pos (a tail not published yet)
// if it fits, and advances *pos; RingPublish makes the batch visible.
inline bool RingStage(RingState &r, char *data, uint64_t cap, uint64_t *pos, FrameHeader h,
                      const void *payload, size_t n) {
  h.size = FrameSize(n);
  uint64_t head = r.head.load(std::memory_order_acquire);
  if (*pos + h.size - head > cap) return false;
  RingCopyIn(data, cap, *pos, &h, sizeof h);
  if (n) RingCopyIn(data, cap, *pos + sizeof h, payload, n);
  *pos += h.size;
  return true;
}
inline void RingPublish(RingState &r, uint64_t pos) {
  r.tail.store(pos, std::memory_order_seq_cst);
  r.items.notify_all();
}

// Consumer: the next frame's header, if there is one (not consumed).
inline bool RingPeek(RingState &r, const char *data, uint64_t cap, FrameHeader *h) {
  uint64_t head = r.head.load(std::memory_order_relaxed);
  if (r.tail.load(std::memory_order_acquire) == head) return false;
  RingCopyOut(data, cap, head, h, sizeof *h);
  return true;
}

// Consumer: copies n payload bytes of the frame at the head, then consumes it.
inline void RingTake(RingState &r, const char *data, uint64_t cap, const FrameHeader &h, void *dst,
                     size_t n) {
  uint64_t head = r.head.load(std::memory_order_relaxed);
  if (n) RingCopyOut(data, cap, head + sizeof h, dst, n);
  r.head.store(head + h.size, std::memory_order_seq_cst);
  r.space.notify_all();
}

// The largest payload one frame carries: a longer one goes in pieces.
inline size_t MaxFramePayload(uint64_t cap) { return size_t(cap / 4) - sizeof(FrameHeader); }

}  // namespace dlhost

#endif  // DLHOST_CHANNEL_H
