import os

# keep TVM's thread pool to the physical cores of this small machine
os.environ.setdefault("TVM_NUM_THREADS", "2")
