// histogram.h: call latency histograms (safe rollout, per-version metrics).
// Log-linear buckets, HDR-style: kSubBits sub-buckets per power of two, so
// every bucket is within 1/2^kSubBits (12.5 %) of its value, from 1 us to
// about 70 minutes. Counts are doubles in a buffer the JS side owns and
// reads as a Float64Array (exact to 2^53). JS thread only (written where
// calls are settled); header-only, no N-API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "constants.h"

namespace dlhost {

class LatencyHistogram {
 public:
  static constexpr int kSubBits = kHistSubBits;
  static constexpr int kSub = 1 << kSubBits;
  static constexpr int kMinLog = kHistMinLog;  // 2^10 ns ~ 1 us: group 0 is below it
  static constexpr int kMaxLog = kHistMaxLog;  // 2^42 ns ~ 73 min: the last bucket holds more
  // Group 0: below 2^kMinLog, linear; group g >= 1: [2^(kMinLog+g-1), 2^(kMinLog+g)).
  static constexpr size_t kBuckets = size_t(kMaxLog - kMinLog + 2) * kSub;
  // The layout JS reads: [count, sum ns, max ns, bucket 0 .. kBuckets-1].
  static constexpr size_t kHeader = 3;
  static constexpr size_t kLength = kHeader + kBuckets;

  // The kLength doubles to count into (zeroed by their owner), or nullptr:
  // recording off.
  void Attach(double *v) { v_ = v; }
  bool on() const { return v_ != nullptr; }

  void Record(uint64_t ns) { RecordN(ns, 1); }
  // n values of ns (a batch's items: submitted and settled together).
  void RecordN(uint64_t ns, size_t n) {
    if (!v_ || n == 0) return;
    v_[0] += double(n);
    v_[1] += double(ns) * double(n);
    if (double(ns) > v_[2]) v_[2] = double(ns);
    v_[kHeader + Bucket(ns)] += double(n);
  }

  static size_t Bucket(uint64_t ns) {
    if (ns < (uint64_t(1) << kMinLog)) return size_t(ns >> (kMinLog - kSubBits));
    int log = 63 - __builtin_clzll(ns);
    if (log > kMaxLog) return kBuckets - 1;
    size_t sub = size_t(ns >> (log - kSubBits)) & (kSub - 1);
    return size_t(log - kMinLog + 1) * kSub + sub;
  }

 private:
  double *v_ = nullptr;
};

}  // namespace dlhost
