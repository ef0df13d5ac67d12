// Bucketed gradient all-reduce among the trainers (data parallelism).
//
// Contract
//  * allreduce_bucketed() is collective over the transport's group: every rank passes a buffer of
//    the same count and dtype. The buffer is cut into buckets of `bucket_bytes` (rounded down to
//    whole elements, at least one); up to `in_flight` buckets are reduced at once, so bucket k+1
//    travels while bucket k is summed.
//  * Deterministic on host buffers: every element is summed in rank order (see transport.h), so the
//    result bits depend only on the inputs and the rank count, not on the bucket size or timing,
//    and every rank ends with the same bits.
//  * Each bucket gets opt.timeout from its start; on failure the first error is returned after the
//    buckets in flight have ended (completed or timed out).
#pragma once

#include <cstddef>

#include "core/transport/transport.h"

namespace mobula {

Status allreduce_bucketed(Transport& t, Buffer buf, ReduceOp op, size_t bucket_bytes, const Options& opt = {},
                          int in_flight = 2);

}  // namespace mobula
