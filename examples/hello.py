"""The smallest Studio job: print something and write a file."""
import os
import platform
import sys

print(f"hello from Studio: job {os.environ.get('STUDIO_JOB_ID', '?')}, "
      f"attempt {os.environ.get('STUDIO_ATTEMPT', '?')}, python {platform.python_version()}")
if len(sys.argv) > 1:
    print("args:", " ".join(sys.argv[1:]))
with open("hello.txt", "w") as f:
    f.write("hello, world\n")
print("wrote hello.txt")
