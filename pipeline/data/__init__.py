"""What each dataset is (its files, mirrors, checksums and class names) and the IDX file format.

Pure: no I/O beyond bytes in and out, no project imports. `config` and the stages import it.
"""
