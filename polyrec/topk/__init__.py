"""Top-K recommendation from implicit feedback: full-ranking evaluation, knowledge graphs, WAA-TA.

Unlike the CTR-style runs (score given impressions, judge by AUC), a top-K run ranks every item for
every user and is judged by Recall/NDCG/HitRate/MRR@K. One folder per concern inside:
  types.py      the data contract shared by loading, models, training and evaluation
  data.py       interactions -> user/item indices, per-task labels, splits
  kg.py         knowledge-graph triples + item links -> collaborative knowledge graph (sparse edges)
  negatives.py  uniform / popularity negative sampling, vectorised
  models/       mf, kgat, waata and the adapter running the multi-task CTR models on (user, item) pairs
  run.py        the training loop, run folder and `polyrec recommend`
"""
