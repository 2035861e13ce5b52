"""`loraflow plan`: full-size memory, FLOPs and step time of a training or generation run, from
configs alone, on the meta device (no GPU, no weights, no data).

It sits with the train layer: it runs train's own setup (`train.model_setup.prepare_unet`,
`train.objective`, `train.optim`), and the trainer asks it whether a CUDA run fits before loading.
"""
