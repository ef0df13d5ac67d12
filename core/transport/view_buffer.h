// Adapts a contiguous Kokkos View to a transport Buffer (host or device by its memory space).
// Local, no ownership: the View must outlive every request that uses the Buffer.
#pragma once

#include <Kokkos_Core.hpp>
#include <type_traits>

#include "core/transport/transport.h"

namespace mobula {

template <class View>
Buffer view_buffer(const View& v) {
  using T = std::remove_const_t<typename View::value_type>;
  constexpr bool host = Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename View::memory_space>::accessible;
  return {const_cast<T*>(v.data()), v.span(), dtype_of<T>(), host ? MemoryPlace::kHost : MemoryPlace::kDevice};
}

}  // namespace mobula
