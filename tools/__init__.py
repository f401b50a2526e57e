"""Tools that are not benchmarks: the prepared GPU check (gpu_check) and the wheels a GPU machine lacks (gpu_wheels)."""
