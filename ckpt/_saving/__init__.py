"""One save, top to bottom (`saver`), and the threads that run saves in the background.

`background` is `save_async`'s thread and its snapshot buffers; `finalize` is NeMo RL's
`begin_finalization` thread and its pruning thread.
"""
