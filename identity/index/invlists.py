"""The inverted lists of an IVF index, fitted to what they hold.

FAISS keeps each list's codes in a `std::vector` that grows by doubling as rows arrive, so
lists filled batch by batch (a build streamed from the store) keep up to twice the memory
their codes need, and that spare capacity stays for the life of the index (BENCHMARKS.md,
"The mirror hands that heap back"). Reading the index back from its snapshot gives exact
sizes but holds both copies at once, 13 GB at 10M faces; this refits one list at a time.
"""

from __future__ import annotations

import faiss

from identity.memory import release_free_memory


def fit_inverted_lists(index: faiss.Index, *, release_every: int = 64 << 20) -> int:
    """Give `index` new inverted lists of exactly the size of what they hold, in place, and
    return the bytes of codes moved (0 for an index without in-memory lists: flat, HNSW,
    or lists mapped from a file). Searches answer the same after.

    The lists are copied from the last to the first, each old list's codes destroyed as
    soon as it is copied (the only per-list release FAISS's Python interface allows: the
    old lists' array shrinks from its end), so the extra memory is one list plus the old
    ids (8 bytes a row, freed at the end), never a second index: the freed arrays go
    back to the kernel every `release_every` bytes copied. Not thread-safe: the caller
    holds the index for itself. Rows added later grow a list again (its array doubles on
    the first), as they do in an index read from its snapshot."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return 0
    old = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(old, faiss.ArrayInvertedLists) or not ivf.own_invlists:
        return 0
    fitted = faiss.ArrayInvertedLists(old.nlist, old.code_size)
    moved = since_release = 0
    for number in reversed(range(old.nlist)):
        size = old.list_size(number)
        if size:  # into an empty list: allocated at exactly this size
            fitted.add_entries(number, size, old.get_ids(number), old.get_codes(number))
            moved += size * old.code_size
            since_release += size * old.code_size
        old.codes.resize(number)  # destroys list `number`'s codes
        if since_release >= release_every:
            # The new lists seldom fit the holes the old ones leave: hand those back as
            # the copy goes, or the process would peak a third above the index.
            release_free_memory()
            since_release = 0
    ivf.replace_invlists(fitted, True)  # frees the old lists (their ids)
    fitted.this.disown()  # the index owns them now
    release_free_memory()
    return moved
