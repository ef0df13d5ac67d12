// Parallel HDF5 through io/hdf5.h at np = 1, 2, 4: collective shard write/read, attributes, errors,
// and the file is readable by the HDF5 command-line tools.
#include "io/hdf5.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <filesystem>

#include "core/runtime/process.h"

namespace mobula::io {
namespace {

std::string shared_path(const std::string& name) {
  // Rank 0 chooses the directory so all ranks agree (pids differ per rank).
  char buf[512] = {0};
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    auto dir = std::filesystem::temp_directory_path() / ("mobula_h5_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    std::snprintf(buf, sizeof buf, "%s", (dir / name).c_str());
  }
  MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

TEST(Hdf5, ShardedWriteReadRoundTrip) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string path = shared_path("shards.h5");
  // Uneven shards: rank r holds 1000 + 37 r elements.
  std::vector<float> mine(static_cast<size_t>(1000 + 37 * rank));
  size_t offset = 0;
  for (int r = 0; r < rank; ++r) offset += static_cast<size_t>(1000 + 37 * r);
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = static_cast<float>(offset + i) * 0.5f;
  {
    auto f = H5File::create(path, MPI_COMM_WORLD);
    ASSERT_TRUE(f.is_ok()) << f.status().message();
    ASSERT_TRUE(f->write_slices("params", mine, MPI_COMM_WORLD).is_ok());
    ASSERT_TRUE(f->set_attr("format", "mobula-test-1").is_ok());
    ASSERT_TRUE(f->close().is_ok());
  }
  auto f = H5File::open(path, MPI_COMM_WORLD);
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  size_t total = 0;
  for (int r = 0; r < size; ++r) total += static_cast<size_t>(1000 + 37 * r);
  auto n = f->dataset_size("params");
  ASSERT_TRUE(n.is_ok());
  EXPECT_EQ(*n, total);
  std::vector<float> back(mine.size(), -1.f);
  ASSERT_TRUE(f->read_slices("params", back, MPI_COMM_WORLD).is_ok());
  EXPECT_EQ(back, mine);
  auto attr = f->get_attr("format");
  ASSERT_TRUE(attr.is_ok()) << attr.status().message();
  EXPECT_EQ(*attr, "mobula-test-1");

  // Reading with a different total is refused with a clear message, not garbage.
  std::vector<float> wrong(mine.size() + 1);
  const Status s = f->read_slices("params", wrong, MPI_COMM_WORLD);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("the ranks asked for"), std::string::npos) << s.message();
  ASSERT_TRUE(f->close().is_ok());

  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && std::string(MOBULA_H5DUMP).size() > 0 &&
      std::string(MOBULA_H5DUMP).find("NOTFOUND") == std::string::npos) {
    auto r = run_capture({MOBULA_H5DUMP, "-A", path});
    ASSERT_TRUE(r.is_ok()) << r.status().message();
    EXPECT_EQ(r->exit_code, 0) << r->err;
    EXPECT_NE(r->out.find("DATASET \"params\""), std::string::npos) << r->out;
    EXPECT_NE(r->out.find("( " + std::to_string(total) + " )"), std::string::npos) << r->out;
    EXPECT_NE(r->out.find("\"mobula-test-1\""), std::string::npos) << r->out;
  }
}

TEST(Hdf5, OpenMissingFileIsAStatus) {
  auto f = H5File::open("/nonexistent/mobula/file.h5", MPI_COMM_WORLD);
  ASSERT_FALSE(f.is_ok());
  EXPECT_NE(f.status().message().find("H5Fopen"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find("/nonexistent/mobula/file.h5"), std::string::npos);
}

TEST(Hdf5, MissingDatasetAndAttributeAreStatuses) {
  const std::string path = shared_path("empty.h5");
  auto f = H5File::create(path, MPI_COMM_WORLD);
  ASSERT_TRUE(f.is_ok());
  EXPECT_FALSE(f->dataset_size("nope").is_ok());
  auto a = f->get_attr("nope");
  ASSERT_FALSE(a.is_ok());
  EXPECT_NE(a.status().message().find("H5Aopen"), std::string::npos) << a.status().message();
}

}  // namespace
}  // namespace mobula::io
