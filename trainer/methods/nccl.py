"""`nccl`: NCCL (Wu et al., "Neighborhood Consensus Contrastive Learning for Backward-
Compatible Representation", AAAI 2022), as the MixBCT authors' repo runs it
(yuleung/MixBCT, BCT_Methods/NCCL: compatible_learning_loss.py and train.py).

loss = head(e, y) + alpha * L1 + beta * L2 (alpha 1, beta 0.01 in every official config).
A queue (8192 entries) holds, per past sample, its normalised old feature o, the head's
logits of o (margin and scale included, detached) and its label. The batch is pushed
first, then for each sample i with normalised new feature n_i and head logits z_i:

    L1_i = -sum_{j: y_j = y_i} w_ij log softmax_j(n_i . o_j / t) / #{j: y_j = y_i}
    L2_i = the same with z_i . zq_j / t over the queued logits zq_j
    w_ij = (1 + o_i . o_j) / 2,   t = 1

averaged over the batch. Empty queue slots (zeros, label -1) stay in the softmax
denominator, as in the official code. The official copy uses every old feature (its
entropy-based "highly credible" selection is not applied: see the note in its train.py),
and so does this one. Under DDP the official queue receives the whole global batch; here
each rank queues its own samples (a queue of local history).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gallery.errors import BadInput
from trainer.methods import METHODS
from trainer.methods.base import MethodContext
from trainer.old_features import OldFeatureMethod


def queue_contrast(query: torch.Tensor, keys: torch.Tensor, weight: torch.Tensor,
                   positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of the weighted supervised-contrastive term against the queue."""
    outputs = query @ keys.t().to(query) / temperature
    outputs = outputs - outputs.max(dim=1, keepdim=True).values.detach()
    log_prob = outputs - torch.logsumexp(outputs, dim=1, keepdim=True)
    # every row has a positive (its own old feature was just queued) unless the batch
    # outgrew the queue; the clamp keeps that case finite where the official code gives NaN
    per_sample = (positive * log_prob * weight).sum(1) / positive.sum(1).clamp_min(1)
    return -per_sample.mean()


@METHODS.register("nccl")
class NCCL(OldFeatureMethod):
    name = "nccl"

    def __init__(self, nccl_alpha: float = 1.0, nccl_beta: float = 0.01,
                 queue_size: int = 8192, nccl_temperature: float = 1.0) -> None:
        if nccl_alpha < 0 or nccl_beta < 0:
            raise BadInput(f"NCCL weights must be >= 0, got alpha {nccl_alpha}, beta {nccl_beta}")
        if int(queue_size) < 1:
            raise BadInput(f"NCCL queue size must be >= 1, got {queue_size}")
        if nccl_temperature <= 0:
            raise BadInput(f"NCCL temperature must be > 0, got {nccl_temperature}")
        super().__init__(nccl_alpha=float(nccl_alpha), nccl_beta=float(nccl_beta),
                         queue_size=int(queue_size), nccl_temperature=float(nccl_temperature))
        self.alpha, self.beta = float(nccl_alpha), float(nccl_beta)
        self.queue_size, self.temperature = int(queue_size), float(nccl_temperature)
        # persistent buffers: a resumed run continues with the same queue
        self.register_buffer("feat_queue", torch.zeros(0, 0))
        self.register_buffer("logit_queue", torch.zeros(0, 0))
        self.register_buffer("queue_labels", torch.full((self.queue_size,), -1, dtype=torch.long))
        self.register_buffer("header", torch.zeros((), dtype=torch.long))

    def prepare(self, context: MethodContext) -> None:
        self._num_classes = int(context.num_classes)
        self.prepare_old_features(context)

    def on_old_features(self, features, labels, device) -> None:
        num_classes = getattr(self, "_num_classes", int(labels.max()) + 1)
        self.feat_queue = torch.zeros(self.queue_size, features.shape[1], device=device)
        self.logit_queue = torch.zeros(self.queue_size, num_classes, device=device)

    @torch.no_grad()
    def push(self, old: torch.Tensor, old_logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Enqueue the batch in order (the official loop, one sample at a time, vectorised)."""
        count = len(labels)
        slots = (self.header + torch.arange(count, device=self.header.device)) % self.queue_size
        keep = slice(max(0, count - self.queue_size), count)  # later samples overwrite earlier
        self.feat_queue[slots[keep]] = old[keep].to(self.feat_queue)
        self.logit_queue[slots[keep]] = old_logits[keep].to(self.logit_queue)
        self.queue_labels[slots[keep]] = labels[keep].to(self.queue_labels)
        self.header.copy_((self.header + count) % self.queue_size)

    def loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        head: nn.Module,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.feat_queue.numel() == 0:
            raise RuntimeError("nccl: prepare() was not called before loss()")
        dtype = torch.promote_types(embeddings.dtype, torch.float32)  # fp32 under autocast
        old = self.old_rows(indices, embeddings).to(dtype)
        new_logits = head.logits(embeddings, labels).to(dtype)
        head_loss = F.cross_entropy(new_logits, labels)
        with torch.no_grad():
            old_logits = head.logits(old, labels).to(dtype)
        self.push(old, old_logits, labels)
        positive = (self.queue_labels[None, :] == labels[:, None]).float()
        weight = 0.5 * (old @ self.feat_queue.t().to(dtype) + 1)
        l1 = queue_contrast(F.normalize(embeddings.to(dtype), dim=1), self.feat_queue, weight,
                            positive, self.temperature)
        l2 = queue_contrast(new_logits, self.logit_queue, weight, positive, self.temperature)
        total = head_loss + self.alpha * l1 + self.beta * l2
        return total, {"head_loss": head_loss.detach(), "l1": l1.detach(), "l2": l2.detach()}
