"""Where probe passages and CALM questions come from: the shipped corpus and public datasets in their own formats.
corpus (shipped), rag (XQuAD, Belebele, NoMIRACL), qa (X-CSQA, MedQA, MGSM), common (languages, shapes, readers).
"""
