"""recipes: how the embedded default model is made (`python -m recipes.default_model`: data,
tokenizer, config, training, eval, model card) and the studies run on it (`reliance`: does it
look?; `first_use`: does it box what a new user asks for?; `learnability`: can its vision
encoder alone learn to see it?)."""
