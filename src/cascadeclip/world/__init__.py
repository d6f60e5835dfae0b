"""The miniature world of `cascade-clip demo`: scenes, their dataset, a tiny CLIP, the protocol and its report."""
