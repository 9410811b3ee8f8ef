"""The quality benchmark (`python -m benchmarks.quality`): does the searched plan beat the hand-set
ones at equal MACs and equal fine-tune budget, and do the search proxies rank plans the way
fine-tuning does? The command line and its help are in `cli`; the parts:

- `protocol`: the protocols (`cifar10`, `digits`), the arms and the Hydra configs every item is composed from;
- `items`: one baseline per model and one arm / seed / target per item file (resumable);
- `compute`: the MACs each arm spent (counted by the library, or recounted for old items);
- `fidelity`: the proxy-fidelity studies (random plans, every proxy, one equal fine-tune);
- `finalists`: the finalists' short fine-tune against the arms' full fine-tune;
- `report`: tables (`<results>.json`, `<results>.md`, fidelity plots) from the finished items.
"""
