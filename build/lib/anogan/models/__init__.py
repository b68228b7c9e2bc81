from anogan.models.dcgan import Discriminator, Generator

__all__ = ["Discriminator", "Generator"]
