"""loraflow: from a raw image collection to a fine-tuned text-to-image LoRA and an illustrated story.

Architecture: layers, lowest first. A module imports only from its own package or from a lower
layer, never from a higher one, not even inside a function (`tests/test_layers.py` reads every
import, function-local ones included, and also finds any import cycle). Packages that share a
layer are independent of each other.

    0. base      errors, atomic (the one way to write a file), config (typed options), images (decoding),
                 quiet (third-party output off unless --verbose)
    1. models    families, loading, hashing, pickle_files, prompt syntax/encoding, LoRA files
    2. generate  GenerationSession, options, infotext, schedulers, control, grid, story (the file format)
    3. score     aesthetic and CLIP scorers, and `loraflow score`
    4. data      ingest, data-juicer filters, export    |  generate.storyboard, generate.story_scoring
    5. train     LoRA training
    6. serve     HTTP API and ComfyUI workflows          |  demo (the bundled demo model and its tools)
    7. cli       loraflow.cli and every package's `cli.py`: thin shells that may import any layer

Why this order, where it is not obvious:
- score sits above generate: `loraflow score` reads the prompt from a generated PNG's infotext or
  from a story file (`generate.story`), and scorers need nothing from data or training.
- data sits above score: the data-juicer model filters (`image_aesthetics_filter`,
  `image_text_similarity_filter`) are the scorer under data-juicer's names.
- storyboard sits above score (best-of-N and `--score` rank panels), so the story file format
  (`generate.story`) is split from the renderer (`generate.storyboard`) to stay below score.
- train sits above data (it reads the data step's exports and decodes images with
  `loraflow.images.load_rgb`, as the filters do, so it trains on the pixels they saw) and above score (validation
  scores); it never imports generate's storyboard.
- demo trains the demo model with train's objective, so it sits beside serve, above train.

One helper per job, each in the lowest layer that needs it: file writes `loraflow.atomic`;
image decoding `loraflow.images`; file SHA-256 and A1111 hashes `loraflow.models.hashing`;
pickle suffixes and the weights-only unpickler `loraflow.models.pickle_files`; min-SNR weighting
`loraflow.train.objective.diffusion_loss`.
"""

__version__ = "0.1.0"
